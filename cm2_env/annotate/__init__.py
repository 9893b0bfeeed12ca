"""The LLM steps of the data pipeline (docs/data_pipeline.md): checklist annotation, the "NoError" LLM filter
and CoT compression. They sit beside the simulator and the judge and reach LLMs only through ``cm2_env.llm``.

- :func:`annotate_dialogue` (``cm2 data annotate``): checklists from the reference trajectory, validated, with a
  repair round.
- :func:`review_dialogue` (``cm2 data llm-filter``): successive review passes at rising reasoning effort.
- :func:`compress_dialogue` (``cm2 data compress-cot``): shorter ``<think>`` blocks, all else byte-identical.
- :func:`process_file`: the concurrent, resumable file runner the commands share.
"""

from cm2_env.annotate.checklists import AnnotationResult, annotate_dialogue
from cm2_env.annotate.compress import BlockOutcome, CompressionResult, compress_dialogue
from cm2_env.annotate.llm_filter import DEFAULT_PASSES, PassVerdict, ReviewResult, review_dialogue
from cm2_env.annotate.runner import Outcome, process_file

__all__ = [
    "AnnotationResult", "annotate_dialogue", "BlockOutcome", "CompressionResult", "compress_dialogue",
    "DEFAULT_PASSES", "PassVerdict", "ReviewResult", "review_dialogue", "Outcome", "process_file",
]
