#!/usr/bin/env python3
"""Publish a trained LapeViT model directory to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py --model outputs/demo --repo_id my-org/lape-vit-digits --dry_run
    python scripts/push_to_hub.py --model outputs/demo --repo_id my-org/lape-vit-digits \\
        --card_source model_cards/lape-vit-digits.yaml --private

The directory must load completely (safetensors weights, config with `auto_map`, the custom code files, class
labels, image processor); otherwise it is refused with every missing item named and nothing is created on the Hub.
Its `results.json`, when present, becomes the card's results and `model-index`; without it the card says that no
evaluation results were supplied. Everything goes up as one commit; pickles, hidden files, Trainer checkpoints and
links to outside the directory never do (the dry run names them). The token comes from HF_TOKEN or `hf auth login`
and is never printed. `--dry_run` prints the files and the card and uploads nothing.

`--space my-org/lape-vit-digits-demo` also publishes the model's demo page as a Gradio Space (the card links to it;
`--space_compare OTHER_ID` shows another published model beside it); the dry run prints its files and card too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.cli import one_line, parse_args, script
from lape_hf.hub import PublishError, prepare_upload, upload
from lape_hf.hub.model_card import CardSource
from lape_hf.hub.space import prepare_space, upload_space

MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"


@dataclass
class PushArguments:
    model: Path | None = field(
        default=None, metadata={"help": "the trained model directory (save_pretrained output); also the first argument"}
    )
    repo_id: str | None = field(default=None, metadata={"help": "the Hub repository, 'namespace/name'"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(default=None, metadata={"help": "branch to commit to (created if missing; main)"})
    commit_message: str | None = field(default=None, metadata={"help": "the commit message"})
    card_source: Path | None = field(
        default=None, metadata={"help": "per-model card prose (YAML), e.g. model_cards/<name>.yaml"}
    )
    template: Path = field(default=MODEL_CARDS / "template.md", metadata={"help": "the model card template (Jinja)"})
    dry_run: bool = field(default=False, metadata={"help": "print the files and the card, upload nothing"})
    space: str | None = field(
        default=None, metadata={"help": "also publish the demo page as this Space, 'namespace/name'"}
    )
    space_compare: list[str] = field(
        default_factory=list, metadata={"metavar": "MODEL_ID", "help": "published models the Space compares with"}
    )

    def __post_init__(self) -> None:
        if self.repo_id is None:
            raise ValueError("--repo_id is required: the Hub repository, 'namespace/name'.")
        if self.space_compare and self.space is None:
            raise ValueError("--space_compare needs --space (the Space that shows the models side by side).")


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(PushArguments, argv, description=__doc__, positional="model")
    source = CardSource.from_yaml(args.card_source) if args.card_source else None
    plan = prepare_upload(
        args.model, args.repo_id, template_path=args.template, card_source=source, space_id=args.space
    )
    space_plan = None
    if args.space is not None:
        license = source.license if source else CardSource.license
        space_plan = prepare_space(args.space, [args.repo_id, *args.space_compare], license=license)
    if args.dry_run:
        print(plan.describe())
        print(f"\n--- README.md (model card) ---\n{plan.card}")
        if space_plan is not None:
            print(f"\n{space_plan.describe()}\n\n--- README.md (Space card) ---\n{space_plan.card}")
        print(f"Dry run: nothing was uploaded to {', '.join(filter(None, [args.repo_id, args.space]))}.")
        return 0
    try:
        commit = upload(plan, private=args.private, revision=args.revision, commit_message=args.commit_message)
        print(f"Published {len(plan.repository_files())} files to {commit.commit_url}")
        if space_plan is not None:
            commit = upload_space(space_plan, private=args.private)
            print(f"Published the demo Space ({len(space_plan.files)} files) to {commit.commit_url}")
    except PublishError as error:  # the Hub or the network, not the command line: exit status 1
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
