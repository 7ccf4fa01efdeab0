"""Transcript lines for the demo corpus: an emotion cue phrase wrapped in neutral filler.

Each line carries its (rendered) emotion only through the cue phrase; the filler around it
("Okay, so", a name, a neutral follow-up sentence) is shared by all emotions, so a text model
has to find the cue rather than count words. A "flat" rendering uses a neutral cue, which is
indistinguishable from a truly neutral line.
"""
from __future__ import annotations

import numpy as np

CUE_PHRASES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "I'll pick it up on the way home.",
        "The meeting moved to Thursday.",
        "We need more coffee filters.",
        "Did you call the landlord back?",
        "It's on the second shelf.",
        "I think the bus leaves at eight.",
        "Your mom called about the weekend.",
        "I'm going to the store later.",
    ),
    "joy": (
        "This is wonderful!",
        "I'm so happy for you!",
        "That's the best news I've heard all year!",
        "Oh, I love it, I love it!",
        "We did it, we actually did it!",
        "You just made my whole day.",
        "This is the greatest birthday ever!",
    ),
    "surprise": (
        "Wait, what? Really?",
        "No way! Seriously?",
        "Oh my God, you're kidding me!",
        "I did not see that coming!",
        "You're here? Since when?",
        "Whoa, whoa, hold on, you got married?",
    ),
    "anger": (
        "I can't believe you did that!",
        "Get out of my apartment!",
        "Don't you dare touch that again!",
        "That's it, I'm done covering for you!",
        "Are you out of your mind?",
        "You lied to me, again!",
    ),
    "sadness": (
        "I really miss her.",
        "I guess it's over.",
        "Nobody even remembered.",
        "I just wanted it to work out.",
        "It's never going to be the same.",
        "I'm sorry, I just can't do this anymore.",
    ),
    "disgust": (
        "Ew, that's disgusting.",
        "Gross, what is that smell?",
        "Ugh, I can't even look at it.",
        "That is absolutely revolting.",
        "Yuck, get it away from me.",
        "You ate that off the floor? Ew.",
    ),
    "fear": (
        "I'm scared, what was that noise?",
        "Please don't leave me alone here.",
        "Oh no, oh no, they're coming.",
        "I'm terrified of what happens next.",
        "What if it finds us?",
        "Somebody's in the hallway, I'm freaking out.",
    ),
}

OPENERS = ("Okay, so", "Well,", "Listen,", "You know what,", "So anyway,", "Hey,", "Look,", "Um,")


def compose_utterance(rng: np.random.Generator, emotion: str, listener: str) -> str:
    """One transcript line whose cue phrase expresses `emotion`.

    Optional parts (each drawn from `rng`): an opener, the listener's name, and a neutral
    follow-up sentence ("Hey, Theo, are you out of your mind? We need more coffee filters.").
    """
    if emotion not in CUE_PHRASES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {sorted(CUE_PHRASES)}")
    cue = _pick(rng, CUE_PHRASES[emotion])
    parts = []
    if rng.random() < 0.4:
        parts.append(_pick(rng, OPENERS))
    if rng.random() < 0.3:
        parts.append(f"{listener},")
    if parts and not cue.startswith(("I ", "I'")):
        cue = cue[0].lower() + cue[1:]  # "Hey, Theo, are you out of your mind?"
    parts.append(cue)
    if rng.random() < 0.3:
        follow_up = _pick(rng, CUE_PHRASES["neutral"])
        if follow_up != cue:
            parts.append(follow_up)
    return " ".join(parts)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]
