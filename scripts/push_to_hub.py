#!/usr/bin/env python3
"""Publish a trained LapeViT model directory to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py outputs/demo --repo_id my-org/lape-vit-digits --dry-run
    python scripts/push_to_hub.py outputs/demo --repo_id my-org/lape-vit-digits \\
        --card_source model_cards/lape-vit-digits.yaml --private

The directory must load completely (safetensors weights, config with `auto_map`, the custom code files, class
labels, image processor); otherwise it is refused with every missing item named and nothing is created on the Hub.
Its `results.json`, when present, becomes the card's results and `model-index`; without it the card says that no
evaluation results were supplied. Everything goes up as one commit. The token comes from HF_TOKEN or `hf auth login`
and is never printed. `--dry-run` prints the files and the card and uploads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.hub import ModelDirectoryError, PublishError, prepare_upload, upload
from lape_hf.hub.model_card import CardSource, CardSourceError

MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="the trained model directory (save_pretrained output)")
    parser.add_argument("--repo_id", required=True, help="the Hub repository, 'namespace/name'")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None, help="the commit message")
    parser.add_argument(
        "--card_source", type=Path, default=None, help="per-model card prose (YAML), e.g. model_cards/<name>.yaml"
    )
    parser.add_argument(
        "--template", type=Path, default=MODEL_CARDS / "template.md", help="the model card template (Jinja)"
    )
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print, upload nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = CardSource.from_yaml(args.card_source) if args.card_source else None
        plan = prepare_upload(args.model_dir, args.repo_id, template_path=args.template, card_source=source)
    except (ModelDirectoryError, CardSourceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan.describe())
        print(f"\n--- README.md (model card) ---\n{plan.card}")
        print(f"Dry run: nothing was uploaded to {args.repo_id}.")
        return 0
    try:
        commit = upload(plan, private=args.private, revision=args.revision, commit_message=args.commit_message)
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Published {len(plan.repository_files())} files to {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
