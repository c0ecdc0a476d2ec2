"""The runpodctl stand-in: stops nothing, says what a real one says.

STANDIN_RUNPODCTL_SYNTAX=new|old|both  which syntax this "release" knows (default new): `runpodctl pod stop ID`
                                       (newer) or `runpodctl stop pod ID` (older); the other is rejected the
                                       way cobra rejects an unknown command
STANDIN_EXIT_RUNPODCTL=<n>             every call fails with code n (an API error)
"""

from __future__ import annotations

import os


def behave(argv: list[str]) -> int | None:
    syntax = os.environ.get("STANDIN_RUNPODCTL_SYNTAX", "new")
    known = {"new": [("pod", "stop")], "old": [("stop", "pod")], "both": [("pod", "stop"), ("stop", "pod")]}[syntax]
    if len(argv) < 3 or tuple(argv[:2]) not in known:
        print(f'Error: unknown command "{argv[0] if argv else ""}" for "runpodctl"')
        print("Run 'runpodctl --help' for usage.")
        return 1
    code = int(os.environ.get("STANDIN_EXIT_RUNPODCTL", "0"))
    if code:
        print("Error: stop pod: request failed: 401 Unauthorized")
        return code
    print(f'pod "{argv[2]}" stopped')
    return 0
