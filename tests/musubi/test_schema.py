"""The committed schema (src/musubi_workspace/data/musubi_schema.json) is what the pinned musubi-tuner says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from musubi_workspace.schema import build_schema, dumps, installed_commit, load_schema, pinned_commit


def _differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}/{k}: only in the live schema")
            elif k not in b:
                out.append(f"{path}/{k}: only in the committed schema")
            else:
                out += _differences(a[k], b[k], f"{path}/{k}")
        return out
    return [] if a == b else [f"{path}: committed {a!r}, live {b!r}"]


def test_committed_schema_equals_the_pinned_parsers(musubi):
    committed, live = load_schema(), build_schema()
    diffs = _differences(committed, live)
    assert not diffs, "committed schema is stale; run `make schema`:\n" + "\n".join(diffs[:40])
    # Byte for byte too: the committed file is exactly what `make schema` writes.
    from musubi_workspace.schema import DATA

    assert DATA.read_text(encoding="utf-8") == dumps(live)


def test_the_schema_records_the_pinned_and_installed_commit(musubi):
    assert load_schema()["musubi_tuner_commit"] == pinned_commit()
    installed = installed_commit()
    if installed is None:
        pytest.skip("the installed musubi-tuner records no commit")
    assert installed == pinned_commit()


def test_every_listed_train_prompt_option_is_parsed(musubi):
    parse = musubi["training.sampling_prompts"].line_to_prompt_dict
    options = load_schema()["prompt_options"]["train"]
    for opt in options:
        assert set(parse(f"a cat --{opt} 1")) != {"prompt"}, opt
    assert set(parse("a cat --zz 1")) == {"prompt"}


def test_every_listed_generate_prompt_option_is_parsed(musubi):
    parse = musubi["fpack_generate_video"].parse_prompt_line
    options = load_schema()["prompt_options"]["generate"]
    for opt in options:
        assert set(parse(f"a cat --{opt} 1")) != {"prompt"}, opt
    for ignored in ("zz", "cn", "im"):  # cn and im are commented out in fpack_generate_video
        assert set(parse(f"a cat --{ignored} 1")) == {"prompt"}, ignored


SAMPLE = {
    "int": 1,
    "float": 1.0,
    "str": "x",
    "bool": True,
    "int_or_pair": [512, 384],
    "list[int]": [0, 1],
    "list[str]": ["x"],
}
WRONG = {
    "int": "1",
    "float": 30,
    "str": 1,
    "bool": "yes",
    "int_or_pair": [1, 2, 3],
    "list[int]": ["a"],
    "list[str]": [1],
}


def test_dataset_key_types_match_the_voluptuous_validator(musubi):
    from voluptuous import MultipleInvalid

    sanitizer = musubi["dataset.config_utils"].ConfigSanitizer()
    dataset = load_schema()["dataset"]
    general = {k: SAMPLE[t] for k, t in dataset["general"].items()}
    image = {k: SAMPLE[t] for k, t in dataset["image"].items()}
    video = {k: SAMPLE[t] for k, t in dataset["video"].items()}
    sanitizer.sanitize_user_config({"general": general, "datasets": [image, video]})
    for part, keys in dataset.items():
        base = {"general": {}, "datasets": [{"video_directory": "v"} if part == "video" else {}]}
        for key, kind in keys.items():
            config = {"general": dict(base["general"]), "datasets": [dict(base["datasets"][0])]}
            (config["general"] if part == "general" else config["datasets"][0])[key] = WRONG[kind]
            with pytest.raises(MultipleInvalid):
                sanitizer.sanitize_user_config(config)
    # Only the listed keys: anything else is "extra keys not allowed".
    with pytest.raises(MultipleInvalid):
        sanitizer.sanitize_user_config({"general": {"cache_directory": "c"}})


def test_value_options_parse_with_their_recorded_type(musubi):
    from musubi_workspace.schema import build_parsers

    parsers = build_parsers(musubi)
    schema = load_schema()["parsers"]
    samples = {"int": ("7", 7), "float": ("0.5", 0.5), "str": ("x", "x"), "int_or_float": ("10%", 0.1)}
    for name, parser in parsers.items():
        required = [a for a in parser._actions if a.required]
        base = [arg for a in required for arg in (a.option_strings[0], "x")]
        for dest, opt in schema[name].items():
            if opt["kind"] != "value" or opt["required"] or opt["type"] not in samples:
                continue
            text, value = samples[opt["type"]]
            if opt["choices"]:
                text = value = opt["choices"][0]
            n = opt["nargs"] if isinstance(opt["nargs"], int) else 1
            args = parser.parse_args(base + [opt["flags"][0]] + [text] * n)
            got = getattr(args, dest)
            expected = [value] * n if opt["nargs"] is not None else value
            assert got == expected, (name, dest, got)
        for dest, opt in schema[name].items():
            if opt["kind"] == "store_true":
                assert getattr(parser.parse_args(base + [opt["flags"][0]]), dest) is True, (name, dest)


def test_importing_musubi_tuner_leaves_the_environment_as_found(musubi):
    """In a fresh process (modules import once per process): import_musubi undoes what the import sets in
    os.environ (TORCHINDUCTOR_CACHE_DIR among others), so nothing later in that process inherits it."""
    code = (
        "import os; before = dict(os.environ); from musubi_workspace.schema import import_musubi; import_musubi(); "
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); print(changed)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
