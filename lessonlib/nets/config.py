"""How every network takes its config: a dataclass, or keyword overrides of the defaults, never both."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["resolve_config", "config_from_dict"]

C = TypeVar("C")


def resolve_config(config_cls: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """``config`` itself, or ``config_cls(**overrides)``; passing both raises (which one should win?)."""
    if config is not None and overrides:
        raise ValueError(f"pass either a {config_cls.__name__} or keyword overrides ({', '.join(sorted(overrides))}), "
                         f"not both; use dataclasses.replace(config, ...) to change a config.")
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"config must be a {config_cls.__name__}, got {type(config).__name__}.")
    return config if config is not None else config_cls(**overrides)


def config_from_dict(config_cls: type[C], values: dict[str, Any]) -> C:
    """A config from a manifest's dict; unknown keys raise, naming the fields the config has.

    Manifests written before 0.2 record an empty ``extra`` dict in U-Net configs; it is dropped.
    """
    values = dict(values)
    if values.get("extra") == {} and "extra" not in {f.name for f in fields(config_cls)}:
        del values["extra"]
    unknown = set(values) - {f.name for f in fields(config_cls)}
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}; its fields are "
                         f"{[f.name for f in fields(config_cls)]}.")
    return config_cls(**values)
