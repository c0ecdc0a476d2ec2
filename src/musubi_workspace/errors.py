"""One error type for everything a user can get wrong.

Code raises `WorkspaceError` with a message that says what is wrong, where (file:line or file:key) and what to
do. `cli.main` prints it as one line on stderr and exits with its code. Unexpected exceptions are bugs: they
propagate with their traceback.
"""

# Exit codes, named so tests and the Makefile can tell failures apart.
EXIT_USER = 2  # bad input: config, version, arguments
EXIT_CHECK = 3  # `make check` found errors
EXIT_CHILD = 4  # a program the workspace ran (trainer, cache script) failed; its own code is reported too
EXIT_BUSY = 5  # the version (or a cache folder) is in use by another run: nothing was done


class WorkspaceError(Exception):
    def __init__(self, message: str, code: int = EXIT_USER):
        super().__init__(message)
        self.message = message
        self.code = code
