"""Rebuild the small real slices in tests/data from the full data beside the checkout (``../shared/data``).

    python tests/data/make_test_data.py [SHARED_DATA]

The slices are committed; this script only documents (and can repeat) how they were cut."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"

HEAD = 224  # rows 0..223: the golden 64, and the index ranges the tests read
# Rows past the head that the tests' filters pick in the full file, in file order, so each filter picks the same
# rows from the slice as from the full file:
EXTRA = sorted(
    {
        *(229, 379, 385, 430, 536, 632, 742, 1047, 1344, 1467, 1539, 1572, 1653, 1833),  # short (test_selection_cli)
        *(234, 255, 357, 380, 430),  # with an input the compressed release rewrote, 40-300 chars (write_variant_files)
        247,  # short response (< 300 chars; test_training_resume)
        *(235, 259, 262, 295),  # the first whose compressed instruction makes a prompt of > 80 tokens (test_scoring)
    }
)
EVAL_ITEMS = 8  # the first items of each test set (vicuna's 8 were already here, for the GPU check)


def main() -> None:
    alpaca = json.loads((SHARED / "cherry_alpaca_5_percent.json").read_text())
    rows = alpaca[:HEAD] + [alpaca[i] for i in EXTRA]
    (HERE / "alpaca_slice.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    outputs = {r["output"] for r in rows}
    compressed = json.loads((SHARED / "cherry_alpaca_5_percent_compressed.json").read_text())
    matching = [r for r in compressed if r["output"] in outputs]  # in the compressed file's own order
    (HERE / "alpaca_slice_compressed.json").write_text(json.dumps(matching, indent=1, ensure_ascii=False) + "\n")
    golden = SHARED / "golden_smollm2_vicuna_64.jsonl"
    (HERE / golden.name).write_bytes(golden.read_bytes())
    (HERE / "eval").mkdir(exist_ok=True)
    for path in sorted((SHARED / "eval").glob("*_test_set.jsonl")):
        lines = path.read_text().splitlines(keepends=True)[:EVAL_ITEMS]
        (HERE / "eval" / path.name).write_text("".join(lines))
    print(f"{len(rows)} alpaca rows, {len(matching)} compressed rows, golden, {EVAL_ITEMS} items per test set")


if __name__ == "__main__":
    main()
