"""A student encoder made from its teacher: the same width, fewer layers, each copied from the teacher.

As DistilBERT and the sentence-transformers distillation recipe do, the student starts as the
teacher with layers left out (embeddings, positions and the kept layers copied whole), so it
begins close to the teacher and training only has to make up for the missing layers.
"""

from __future__ import annotations

import dataclasses

from model.encoder import Encoder
from model.errors import ModelError


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, the first and the last always among them: 6 -> 3 keeps 0, 3, 5."""
    if not 1 <= student_layers < teacher_layers:
        raise ModelError(f"--layers must be between 1 and {teacher_layers - 1} (the teacher has {teacher_layers})")
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(i * step + 0.5) for i in range(student_layers)]


def student_of(teacher: Encoder, layers: list[int]) -> Encoder:
    """A new Encoder with the teacher's embeddings and the given layers, in order; the teacher is untouched."""
    config = dataclasses.replace(teacher.config, n_layers=len(layers))
    student = Encoder(config)
    state = teacher.state_dict()
    renamed = {}
    for name, tensor in state.items():
        if not name.startswith("layers."):
            renamed[name] = tensor.clone()
            continue
        index, rest = name.removeprefix("layers.").split(".", 1)
        if int(index) in layers:
            renamed[f"layers.{layers.index(int(index))}.{rest}"] = tensor.clone()
    student.load_state_dict(renamed, strict=True)
    return student
