"""Writes the JSONL files the test task YAMLs read (run from the repository root:
`python tests/lm_eval_tasks/make_data.py`). Text comes from the synthetic corpus with evaluation
seeds, so the zoo tokenizer covers every word; each doc is a short needle haystack."""

import json
import random
from pathlib import Path

from harness.synthetic import EVAL_SEED_BASE, PREAMBLE, Corpus, needle_sentence, query_text

HERE = Path(__file__).parent


def needle_doc(i: int) -> dict:
    corpus, rng = Corpus(EVAL_SEED_BASE + 7000 + i), random.Random(i)
    key, value = corpus.fact()
    hay = corpus.sentences(4)
    hay.insert(rng.randrange(len(hay) + 1), needle_sentence(key, value))
    context = PREAMBLE + " " + " ".join(hay) + query_text(key)
    distractors = [corpus.fact()[1] for _ in range(3)]
    label = rng.randrange(4)
    choices = distractors[:label] + [value] + distractors[label:]
    return {"context": context, "answer": value, "choices": choices, "label": label}


def main() -> None:
    docs = [needle_doc(i) for i in range(6)]
    with open(HERE / "needle.jsonl", "w") as f:  # read by needle_mc.yaml and needle_gen.yaml
        for d in docs:
            f.write(json.dumps(d) + "\n")
    with open(HERE / "text.jsonl", "w") as f:
        for i in range(2):
            f.write(json.dumps({"text": Corpus(EVAL_SEED_BASE + 8000 + i).text(30)}) + "\n")


if __name__ == "__main__":
    main()
