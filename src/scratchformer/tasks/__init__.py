"""Tasks: generators and datasets the trainer consumes without task-specific glue.

``build_task(name, **options)`` builds any task in :data:`TASKS`; see
docs/tasks.md for each format and for how to add a task.
"""

from scratchformer.tasks.arithmetic import (
    AdditionGPTConfig,
    AdditionGPTTask,
    AdditionSeq2SeqConfig,
    AdditionSeq2SeqTask,
    DifferenceSignConfig,
    DifferenceSignTask,
    parse_lengths,
    unreverse_answer,
)
from scratchformer.tasks.base import (
    IGNORE_INDEX,
    TASK_KINDS,
    TASKS,
    Batch,
    Example,
    ExampleDataset,
    GenerativeTask,
    PrebuiltSplitsTask,
    Prompt,
    ShownAnswer,
    Task,
    TaskConfig,
    build_task,
    pad_collate,
    register_task,
    task_for_prompts,
)
from scratchformer.tasks.classification import TextClassificationConfig, TextClassificationTask
from scratchformer.tasks.files import read_records
from scratchformer.tasks.lengthgen import FORMATS, AdditionFormat, AdditionLengthgenConfig, AdditionLengthgenTask
from scratchformer.tasks.contamination import contamination_report, task_contamination
from scratchformer.tasks.regression import RegressionConfig, RegressionTask
from scratchformer.tasks.text import (
    LinesDataset,
    RandomBlockDataset,
    TextLinesLMConfig,
    TextLinesLMTask,
    TextLMConfig,
    TextLMTask,
    TiledBlockDataset,
    load_wikitext,
    read_text_file,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "TASK_KINDS",
    "FORMATS",
    "AdditionFormat",
    "AdditionGPTConfig",
    "AdditionLengthgenConfig",
    "AdditionLengthgenTask",
    "AdditionGPTTask",
    "AdditionSeq2SeqConfig",
    "AdditionSeq2SeqTask",
    "Batch",
    "DifferenceSignConfig",
    "DifferenceSignTask",
    "Example",
    "ExampleDataset",
    "GenerativeTask",
    "LinesDataset",
    "PrebuiltSplitsTask",
    "Prompt",
    "RandomBlockDataset",
    "RegressionConfig",
    "RegressionTask",
    "ShownAnswer",
    "Task",
    "TaskConfig",
    "TextClassificationConfig",
    "TextClassificationTask",
    "TextLMConfig",
    "TextLMTask",
    "TextLinesLMConfig",
    "TextLinesLMTask",
    "TiledBlockDataset",
    "build_task",
    "contamination_report",
    "load_wikitext",
    "pad_collate",
    "parse_lengths",
    "read_records",
    "read_text_file",
    "register_task",
    "task_contamination",
    "task_for_prompts",
    "unreverse_answer",
]
