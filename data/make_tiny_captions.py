"""Regenerates data/tiny_captions.txt: a small, deterministic caption corpus for the tiny demo and tests.

No real caption dataset can be downloaded here, so the project makes its own: COCO-style sentences from a
fixed grammar (subjects, actions, places, times), enough for a sentencepiece model and a LoRA demo to learn.
Usage: python data/make_tiny_captions.py [--count 800]
"""

import argparse
import os
import random

SUBJECTS = [
    "a dog",
    "a cat",
    "two children",
    "an old man",
    "a young woman",
    "a red car",
    "a small boat",
    "a brown horse",
    "a group of people",
    "a bird",
    "a train",
    "a chef",
    "a guitarist",
    "three sheep",
]
ACTIONS = [
    "running along",
    "sitting next to",
    "standing near",
    "walking across",
    "resting on",
    "playing beside",
    "waiting at",
    "looking at",
    "jumping over",
    "driving past",
]
PLACES = [
    "the beach",
    "a wooden bench",
    "the river",
    "a busy street",
    "the snowy mountain",
    "a green park",
    "the old bridge",
    "a quiet library",
    "the city square",
    "a sandy desert",
    "the harbour",
]
TIMES = ["at sunset", "in the morning", "under a blue sky", "in heavy rain", "at night", "on a sunny day", ""]
SOUNDS = ["while birds sing", "as waves crash", "with music playing", "while a bell rings", "", ""]


def make_captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = [rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES), rng.choice(TIMES), rng.choice(SOUNDS)]
        sentence = " ".join(p for p in parts if p)
        out.append(sentence[0].upper() + sentence[1:] + ".")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "tiny_captions.txt"))
    args = parser.parse_args()
    with open(args.out, "w") as f:
        f.write("\n".join(make_captions(args.count)) + "\n")
    print(f"wrote {args.count} captions to {args.out}")


if __name__ == "__main__":
    main()
