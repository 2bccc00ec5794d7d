"""``visagent convert llava SRC DST``: original-format LLaVA / LLaVA-Plus checkpoints -> transformers llava."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Convert checkpoints to the formats visagent loads.", no_args_is_help=True)

    @group.command("llava")
    def llava(
        src: Annotated[Path, typer.Argument(help="original-format LLaVA / LLaVA-Plus checkpoint folder (LlavaLlamaForCausalLM)")],
        dst: Annotated[Path, typer.Argument(help="output folder: a transformers LlavaForConditionalGeneration checkpoint + processor")],
        vision_tower: Annotated[
            Optional[str], typer.Option(help="CLIP vision checkpoint (name or local folder) instead of config.json's mm_vision_tower")
        ] = None,
        dtype: Annotated[Optional[str], typer.Option(help="float16, bfloat16 or float32 (default: the source's torch_dtype)")] = None,
    ) -> None:
        """Convert SRC to a transformers llava checkpoint at DST (use it as models.planner.checkpoint)."""
        from visagent.llava_convert import convert_llava

        out = convert_llava(src, dst, vision_tower=vision_tower, dtype=dtype)
        typer.echo(f"wrote {out} (set models.planner.checkpoint: {out}; planner.format: llava_plus for LLaVA-Plus)")

    app.add_typer(group, name="convert")
