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
The Space loads the models' main branch, so `--revision` with `--space` is refused; with `--private` the Space needs an
HF_TOKEN secret to load the model (a warning says so). The model is uploaded first: if the Space then fails, the
message says that the model is published and the Space is not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.cli import one_line, parse_args, script
from lape_hf.hub import PublishError, prepare_upload, upload
from lape_hf.hub.model_card import CardSource
from lape_hf.hub.space import prepare_space, private_model_warning, upload_space

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
        if self.space is not None and self.revision not in (None, "main"):
            raise ValueError(
                f"--revision={self.revision!r} with --space: the Space loads the models' main branch; publish the "
                "Space from an upload to main, or leave out --space."
            )


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
    if space_plan is not None and args.private:
        print(private_model_warning(args.repo_id), file=sys.stderr)
    if args.dry_run:
        print(plan.describe())
        print(f"\n--- README.md (model card) ---\n{plan.card}")
        if space_plan is not None:
            print(f"\n{space_plan.describe()}\n\n--- README.md (Space card) ---\n{space_plan.card}")
        print(f"Dry run: nothing was uploaded to {', '.join(filter(None, [args.repo_id, args.space]))}.")
        return 0
    try:
        commit = upload(plan, private=args.private, revision=args.revision, commit_message=args.commit_message)
    except PublishError as error:  # the Hub or the network, not the command line: exit status 1
        not_tried = f" The Space {args.space} was not attempted." if space_plan is not None else ""
        print(f"error: {one_line(error)}{not_tried}", file=sys.stderr)
        return 1
    print(f"Published {len(plan.repository_files())} files to {commit.commit_url}")
    if space_plan is None:
        return 0
    try:
        space_commit = upload_space(space_plan, private=args.private)
    except PublishError as error:
        print(
            f"error: the model {args.repo_id} is published ({commit.commit_url}) but its Space is not: "
            f"{one_line(error)} Run the same command again to retry (it commits the model again, then the Space).",
            file=sys.stderr,
        )
        return 1
    print(f"Published the demo Space ({len(space_plan.files)} files) to {space_commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
