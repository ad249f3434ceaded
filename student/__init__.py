"""Student stage: the open_clip-based student, its losses, the accelerate training loop and inference.

    import student
    model = student.load("runs/demo/student")      # one call: config, weights, tokenizer, thresholds
    out = model.predict(images)                     # probs, decisions, reports, rationales, maps
"""
from student.checkpoint import load
from student.config import StudentConfig
from student.model import StudentModel, create_student

__all__ = ["StudentConfig", "StudentModel", "create_student", "load"]
