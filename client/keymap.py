"""Keyboard, mouse and gamepad -> ``world.actions.Action`` for the player; remappable through a config file.

Bindings are pygame key *names* (``pygame.key.name``: "w", "left shift", "space", "up", "f12"), so a config file
is readable and this module needs no pygame to load or test. A config file (JSON or TOML) overrides any subset:

    # keys.toml
    [keys]
    forward = ["w", "up"]          # arrow up then walks instead of looking up
    look_up = ["i"]
    [mouse]
    sensitivity_rad_per_px = 0.004
    invert_y = true

Conventions follow ``world.actions``: yaw > 0 turns right, pitch > 0 looks up, moving right is +move_right.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from spatia.world.actions import Action
from spatia.world.errors import InvalidInputError

# Held bindings: each name is an axis direction; one-shot bindings act on key down.
HELD = ("forward", "back", "left", "right", "up", "down", "sprint", "look_left", "look_right", "look_up", "look_down")
ONE_SHOT = ("release_mouse", "toggle_hud", "toggle_minimap", "screenshot", "prompt", "edit", "quit")

DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "forward": ("w",),
    "back": ("s",),
    "left": ("a",),
    "right": ("d",),
    "up": ("space", "e"),
    "down": ("c", "q"),
    "sprint": ("left shift", "right shift"),
    "look_left": ("left",),
    "look_right": ("right",),
    "look_up": ("up",),
    "look_down": ("down",),
    "release_mouse": ("escape",),
    "toggle_hud": ("f1",),
    "toggle_minimap": ("m",),
    "screenshot": ("f12",),
    "prompt": ("t",),
    "edit": ("x",),
    "quit": ("f10",),
}


@dataclass(frozen=True)
class KeyMap:
    keys: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_KEYS))
    look_rate_rad_s: float = math.radians(90.0)  # arrow keys / full right stick
    mouse_sensitivity_rad_per_px: float = 0.003
    invert_y: bool = False
    # gamepad (pygame joystick axis indices; SDL's usual layout for Xbox-style pads)
    stick_move_x: int = 0
    stick_move_y: int = 1  # pushed up = negative
    stick_look_x: int = 3
    stick_look_y: int = 4
    deadzone: float = 0.15

    def __post_init__(self) -> None:
        unknown = set(self.keys) - set(HELD) - set(ONE_SHOT)
        if unknown:
            raise InvalidInputError(f"unknown key bindings {sorted(unknown)}; known: {list(HELD + ONE_SHOT)}")
        if self.look_rate_rad_s < 0 or self.mouse_sensitivity_rad_per_px < 0:
            raise InvalidInputError("look rate and mouse sensitivity must be >= 0")
        if not 0.0 <= self.deadzone < 1.0:
            raise InvalidInputError(f"deadzone must be in [0, 1), got {self.deadzone}")

    def bindings_of(self, key_name: str) -> list[str]:
        """The binding names that ``key_name`` (lower case pygame name) triggers."""
        key_name = key_name.lower()
        return [b for b, names in self.keys.items() if key_name in names]

    def action(
        self,
        held: Iterable[str],  # pygame key names held now
        dt_s: float,
        mouse_dx_px: float = 0.0,  # relative motion since the last action (> 0 = right / down on screen)
        mouse_dy_px: float = 0.0,
        stick: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),  # move x, move y, look x, look y in [-1, 1]
        seq: int = 0,
    ) -> Action:
        """The ``Action`` for one tick of ``dt_s`` seconds."""
        on = {b for k in held for b in self.bindings_of(k)}

        def axis(pos: str, neg: str) -> float:
            return float(pos in on) - float(neg in on)

        dz = self.deadzone
        sx, sy, lx, ly = (0.0 if abs(v) < dz else max(-1.0, min(1.0, float(v))) for v in stick)
        move_forward = max(-1.0, min(1.0, axis("forward", "back") - sy))
        move_right = max(-1.0, min(1.0, axis("right", "left") + sx))
        flip = -1.0 if self.invert_y else 1.0
        return Action(
            move_forward=move_forward,
            move_right=move_right,
            move_up=axis("up", "down"),
            yaw_rate_rad_s=(axis("look_right", "look_left") + lx) * self.look_rate_rad_s,
            pitch_rate_rad_s=(axis("look_up", "look_down") - ly * flip) * self.look_rate_rad_s,
            # the mouse moving right turns right; moving up (dy < 0) looks up
            yaw_delta_rad=mouse_dx_px * self.mouse_sensitivity_rad_per_px,
            pitch_delta_rad=-mouse_dy_px * self.mouse_sensitivity_rad_per_px * flip,
            sprint="sprint" in on,
            dt_s=dt_s,
            seq=seq,
        )


def load_keymap(path: str | Path | None) -> KeyMap:
    """A ``KeyMap`` from a JSON or TOML file (sections ``keys``, ``mouse``, ``gamepad``); None = the defaults."""
    if path is None:
        return KeyMap()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"key config not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            doc = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"key config {path} is not valid {path.suffix[1:] or 'JSON'}: {exc}") from None
    return keymap_from_dict(doc, str(path))


def keymap_from_dict(doc: dict, where: str = "key config") -> KeyMap:
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{where}: expected a table/object at the top")
    keys = dict(DEFAULT_KEYS)
    for name, value in (doc.get("keys") or {}).items():
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise InvalidInputError(f"{where}: keys.{name} must be a key name or a list of key names")
        keys[name] = tuple(n.lower() for n in names)
    km = KeyMap(keys=keys)
    mouse, pad = doc.get("mouse") or {}, doc.get("gamepad") or {}
    known = {f.name for f in fields(KeyMap)}
    changes = {}
    for src, mapping in ((mouse, {"sensitivity_rad_per_px": "mouse_sensitivity_rad_per_px", "invert_y": "invert_y"}),
                         (pad, {n: n for n in ("stick_move_x", "stick_move_y", "stick_look_x", "stick_look_y",
                                               "deadzone")})):
        for k, v in src.items():
            if k not in mapping:
                raise InvalidInputError(f"{where}: unknown setting {k!r}; known: {sorted(mapping)}")
            changes[mapping[k]] = v
    if "look_rate_deg_s" in doc:
        changes["look_rate_rad_s"] = math.radians(float(doc["look_rate_deg_s"]))
    assert set(changes) <= known
    return replace(km, **changes)
