"""The 18 instrument classes (SPEC section 3): the 16 General-MIDI families, Vocal and Unknown.

General MIDI groups its 128 programs into 16 families of 8; drums (``is_drum``) map to
``Percussive``, as in Slakh2100. Class ids are stable: they are stored in dumps and checkpoints.
"""

from __future__ import annotations

from stemstream.errors import ConfigError

INSTRUMENT_CLASSES: tuple[str, ...] = (
    "Piano",
    "Chromatic Percussion",
    "Organ",
    "Guitar",
    "Bass",
    "Strings",
    "Ensemble",
    "Brass",
    "Reed",
    "Pipe",
    "Synth Lead",
    "Synth Pad",
    "Synth Effects",
    "Ethnic",
    "Percussive",
    "Sound Effects",
    "Vocal",
    "Unknown",
)
NUM_CLASSES = len(INSTRUMENT_CLASSES)
PERCUSSIVE = INSTRUMENT_CLASSES.index("Percussive")
VOCAL = INSTRUMENT_CLASSES.index("Vocal")
UNKNOWN = INSTRUMENT_CLASSES.index("Unknown")
NEVER_TARGET = frozenset({VOCAL, UNKNOWN})

# Slakh2100 metadata names some classes differently from the GM family names.
_ALIASES = {
    "drums": "Percussive",
    "percussion": "Percussive",
    "chromatic percussion": "Chromatic Percussion",
    "synth lead": "Synth Lead",
    "synth pad": "Synth Pad",
    "sound effects": "Sound Effects",
    "synth effects": "Synth Effects",
    "strings (continued)": "Ensemble",
    "voice": "Vocal",
    "vocals": "Vocal",
}
_BY_NAME = {name.lower(): i for i, name in enumerate(INSTRUMENT_CLASSES)}
_BY_NAME.update({alias: _BY_NAME[target.lower()] for alias, target in _ALIASES.items()})


def class_from_program(program: int, is_drum: bool = False) -> int:
    """Class id of a 0-based General-MIDI program (``is_drum`` wins over the program)."""
    if is_drum:
        return PERCUSSIVE
    if not 0 <= program <= 127:
        raise ConfigError(f"GM program must be in 0..127, got {program}")
    return program // 8


def class_from_name(name: str) -> int:
    """Class id from a class name (case-insensitive; Slakh aliases such as 'Drums' accepted)."""
    key = name.strip().lower().replace("_", " ")
    if key not in _BY_NAME:
        choices = ", ".join(INSTRUMENT_CLASSES[i] for i in range(NUM_CLASSES)
                            if i not in NEVER_TARGET)
        raise ConfigError(f"unknown instrument {name!r}; choose one of: {choices} (or an alias: "
                          "Drums; see `stemstream instruments`)")
    return _BY_NAME[key]


def playable_class(name: str) -> int:
    """:func:`class_from_name` for a part to generate: warns when no training window ever
    targets that class (Vocal, Unknown), so no model has learned to play it."""
    class_id = class_from_name(name)
    if class_id in NEVER_TARGET:
        import logging

        logging.getLogger(__name__).warning(
            "no model is trained to play %s (training never targets Vocal or Unknown stems); "
            "expect an arbitrary part", class_name(class_id))
    return class_id


def aliases_of(class_id: int) -> list[str]:
    """The other names :func:`class_from_name` accepts for a class (e.g. Drums for
    Percussive), capitalised."""
    name = class_name(class_id).lower()
    return sorted(alias.title() for alias, target in _ALIASES.items()
                  if target.lower() == name and alias != name)


def class_name(class_id: int) -> str:
    """Name of a class id."""
    if not 0 <= class_id < NUM_CLASSES:
        raise ConfigError(f"instrument class id must be in 0..{NUM_CLASSES - 1}, got {class_id}")
    return INSTRUMENT_CLASSES[class_id]
