"""UnZipLoRA Score: CLIP-I alignment of generated samples with the training image, to rank runs and seeds."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..unziplora.render import render_table, to_image_tensor
from ..unziplora.scoring import NAN_CELL, WHAT, score
from .validate import check_inputs, plain_errors, queue_check

_BATCH = ("A batch: one image per run or seed, in the same order for every kind (index i of each batch is "
          "row i of the table).")


class UnZipLoRAScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRAScore",
            display_name="UnZipLoRA Score",
            category="UnZipLoRA/inspect",
            description="Scores samples against the training image with your CLIP Vision model (CLIP-I, the paper's "
                        "alignment metric: cosine of image embeddings, higher = closer): style-only samples for "
                        "style, content-only samples for content, combined samples for both. Batches (several "
                        "seeds or runs) become rows of a table; the best row is marked and returned.",
            is_output_node=True,
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="A CLIP Vision model (Load CLIP Vision), e.g. "
                                                           "CLIP-ViT-L-14 or ViT-H-14. Its embeddings are compared."),
                io.Image.Input("reference", tooltip="The training image (several: each sample's score is the mean "
                                                    "over them)."),
                io.Image.Input("style_images", optional=True,
                               tooltip="Style LoRA alone on new subjects ('A dog in sketch style'). " + _BATCH),
                io.Image.Input("content_images", optional=True,
                               tooltip="Content LoRA alone ('A sks cat on the beach'). " + _BATCH),
                io.Image.Input("combined_images", optional=True,
                               tooltip="Both LoRAs with the combined prompt. " + _BATCH),
                io.String.Input("labels", default="", optional=True,
                                tooltip="Names of the rows, comma-separated, e.g. 'seed 0, seed 1, seed 2'. "
                                        "Empty: #0, #1, ... At most 40 characters a name (they are drawn in the table)."),
                io.Combo.Input("crop", options=["center", "stretch"], default="center",
                               tooltip="How images are fitted to the model's square input: center crop (what CLIP "
                                       "scores usually use) or stretch the whole image."),
            ],
            outputs=[
                io.Float.Output("style_score", display_name="style_score",
                                tooltip="Mean CLIP-I of the style-only samples (0 if not connected)."),
                io.Float.Output("content_score", display_name="content_score",
                                tooltip="Mean CLIP-I of the content-only samples (0 if not connected)."),
                io.Float.Output("combined_score", display_name="combined_score",
                                tooltip="Mean CLIP-I of the combined samples (0 if not connected)."),
                io.Int.Output("best_index", display_name="best_index",
                              tooltip="The row (batch index) with the highest mean over the kinds given."),
                io.Image.Output("table", display_name="table",
                                tooltip="The scores as a small table; the best row highlighted."),
                io.String.Output("report", display_name="report",
                                 tooltip="The same table as text."),
            ],
        )

    @classmethod
    def validate_inputs(cls, reference=None, style_images=None, content_images=None, combined_images=None,
                        labels=None, crop=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, clip_vision, reference, style_images=None, content_images=None, combined_images=None,
                labels="", crop="center") -> io.NodeOutput:
        check_inputs(cls, {"labels": labels, "crop": crop})
        if clip_vision is None or not hasattr(clip_vision, "encode_image"):
            raise ValueError("clip_vision: connect a CLIP Vision model (Load CLIP Vision)")
        table = score(clip_vision, reference, {"style": style_images, "content": content_images,
                                                "combined": combined_images}, labels, crop=crop == "center")
        headers, rows = table.cells()
        kinds = ", ".join(WHAT[k] for k in table.per_kind)
        title = "UnZipLoRA Score: CLIP-I vs the training image"
        note = f"{kinds}; best: {table.labels[table.best]}" if table.rows > 1 else kinds
        if table.unscored:
            note += f"; {NAN_CELL}: NaN or infinite pixels, left out of the means"
        image = to_image_tensor(render_table(title, headers, rows, best=table.best if table.rows > 1 else None,
                                             note=note))
        report = "\n".join("\t".join(r) for r in [headers] + rows)
        return io.NodeOutput(table.mean("style"), table.mean("content"), table.mean("combined"), table.best, image,
                             report, ui=ui.PreviewImage(image, cls=cls))
