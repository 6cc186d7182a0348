"""Online models: River pipelines by name, exact online quality metrics, test-then-train learner."""

from models.learner import OnlineLearner, ScoreResult
from models.metrics import QualityTracker
from models.pipelines import MODELS, make_model

__all__ = ["MODELS", "OnlineLearner", "QualityTracker", "ScoreResult", "make_model"]
