"""Load a policy: ``default.yaml``, then the model's override, then an explicit file.

Each layer is deep-merged over the one before (mappings merge, lists and scalars replace), and
the result is validated against :mod:`policies.schema`. Errors name the file, line and key path.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelship.core.assets import asset_dir
from modelship.core.errors import PolicyError
from modelship.policies.schema import Policy

#: the policies shipped with modelship: ``default.yaml`` and the example per-model ones
POLICY_DIR = asset_dir("policies")
DEFAULT_POLICY = POLICY_DIR / "default.yaml"
#: a model name that can also name a file: no separators, no leading dot
_FILE_NAME = re.compile(r"[^/\\\x00]+")


#: how errors and ``LoadedPolicy.sources`` name a policy that came as text (a pipeline parameter)
TEXT_SOURCE = "<policy parameter>"


@dataclass(frozen=True)
class _Layer:
    path: Path | str
    data: dict[str, Any]
    root: yaml.Node | None


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    sources: tuple[Path | str, ...]

    @property
    def digest(self) -> str:
        return policy_hash(self.policy)


def policy_hash(policy: Policy) -> str:
    canonical = json.dumps(policy.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _read_layer(path: Path) -> _Layer:
    if path.is_dir():
        raise PolicyError(
            f"policy file {path} is a directory",
            hint="name a YAML file; a folder of per-model policies goes to --policies "
            "or MODELSHIP_POLICIES",
        )
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(
            f"cannot read policy file {path}: {e.strerror}", hint="check the path"
        ) from e
    return _parse_layer(text, path)


def _parse_layer(text: str, path: Path | str) -> _Layer:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise PolicyError(
            "policy is not valid YAML", errors=[(place, str(getattr(e, "problem", e)))]
        ) from e
    except RecursionError:  # PyYAML composes recursively: '[' * 5000 goes past Python's limit
        raise PolicyError(
            "policy is nested too deeply to read",
            errors=[(str(path), "more levels of nesting than YAML here can hold")],
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(
            "policy must be a YAML mapping", errors=[(f"{path}:1:1", f"got {type(data).__name__}")]
        )
    return _Layer(path, data, root)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _find_node(root: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[yaml.Node | None, int]:
    """The node that names the deepest part of ``loc`` found, and how many steps were found.

    For a mapping entry that is the key (whose line is where a person looks), not its value.
    """
    node, mark, depth = root, root, 0
    for step in loc:
        found: tuple[yaml.Node, yaml.Node] | None = None
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(step)), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value)
        ):
            found = (node.value[step], node.value[step])
        if found is None:
            break
        mark, node = found
        depth += 1
    return mark, depth


def _owner(layers: list[_Layer], loc: tuple[int | str, ...]) -> _Layer | None:
    """The layer whose value the merge kept at ``loc``, or at the deepest part of it present.

    As :func:`_merge` does: mappings merge, and anything else (a list, a scalar, a null)
    replaces what came before it, so only the mappings after the last such value count.
    """
    live = [(layer, layer.data) for layer in layers]
    owner = None
    for step in loc:
        having = [(layer, v[step]) for layer, v in live if isinstance(v, dict) and step in v]
        if not having:
            break
        owner = having[-1][0]
        if not isinstance(having[-1][1], dict):
            break  # replaced whole by the latest layer that has it
        others = [i for i, (_, v) in enumerate(having) if not isinstance(v, dict)]
        live = having[others[-1] + 1 :] if others else having
    return owner


def _place(layers: list[_Layer], loc: tuple[int | str, ...]) -> str:
    """Where in the YAML an error points: in the layer whose value the merge kept there."""
    key = ".".join(str(p) for p in loc) or "(top)"
    owner = _owner(layers, loc)
    node = _find_node(owner.root, loc)[0] if owner is not None else None
    if owner is None or node is None:
        return f"{layers[-1].path} {key}"
    return f"{owner.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1} {key}"


def load_policy(
    model: str | None = None,
    path: Path | None = None,
    *,
    policy_dir: Path | None = None,
    text: str | None = None,
) -> LoadedPolicy:
    """The effective policy for ``model``: default, then ``<model>.yaml``, then ``path``, then
    ``text`` (a policy sent as YAML text with a pipeline run: it travels, a path would not).

    Per-model policies come from ``policy_dir`` (``--policies`` or ``MODELSHIP_POLICIES``; the
    shipped ones when None). A folder with its own ``default.yaml`` replaces the shipped default.
    """
    folder = _policy_folder(policy_dir)
    base = folder / "default.yaml"
    layers = [_read_layer(base if base.is_file() else DEFAULT_POLICY)]
    if model:
        own = folder / f"{_file_name(model)}.yaml"
        if own.is_file():
            layers.append(_read_layer(own))
    if path is not None:
        layers.append(_read_layer(Path(path)))
    if text:
        layers.append(_parse_layer(text, TEXT_SOURCE))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    try:
        policy = Policy.model_validate(merged)
    except ValidationError as e:
        errors = [(_place(layers, tuple(err["loc"])), _message(err)) for err in e.errors()]
        hint = "fix the keys above; `modelship policy check FILE` checks a file on its own"
        if text and any(p.startswith(TEXT_SOURCE) and "unknown key" in m for p, m in errors):
            # a policy sent with a run by a newer modelship than the one this step runs
            hint = (
                f"the policy sent with the run has keys this modelship ({_version()}) does not "
                "know: build and push the pipeline image from the same modelship that submits "
                "(make pipeline-image; modelship compile --image REF), or drop those keys"
            )
        raise PolicyError(
            f"invalid policy ({len(errors)} error{'s' if len(errors) > 1 else ''})",
            errors=errors,
            hint=hint,
        ) from e
    return LoadedPolicy(policy, tuple(layer.path for layer in layers))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelship")
    except PackageNotFoundError:
        return "unknown version"


def policy_yaml(policy: Policy) -> str:
    """The whole policy as YAML text, which :func:`load_policy` reads back as ``text``."""
    return yaml.safe_dump(policy.model_dump(mode="json", by_alias=True), sort_keys=False)


def _policy_folder(policy_dir: Path | None) -> Path:
    if policy_dir is None:
        return POLICY_DIR
    if not Path(policy_dir).is_dir():
        raise PolicyError(
            f"policy folder {policy_dir} does not exist or is not a folder",
            hint="point --policies or MODELSHIP_POLICIES at a folder of MODEL.yaml files, "
            "or unset it to use the shipped policies",
        )
    return Path(policy_dir)


def _file_name(model: str) -> str:
    if not _FILE_NAME.fullmatch(model) or model.startswith("."):
        raise PolicyError(
            f"model name {model!r} cannot name a policy file",
            hint="use a registered model's name: no '/', '\\' or leading '.'",
        )
    return model


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (not part of the policy schema)"
    msg = str(err["msg"])
    if "input" in err and err["type"] not in ("missing",):
        msg += f" (got {err['input']!r})"
    return msg
