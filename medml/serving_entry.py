"""The registered model's entry point, loaded by MLflow as code ("models from code").

MLflow copies this file into the model and runs it when the model is loaded: the model is
:class:`~medml.serving.MedmlClassifier` from the ``medml`` package bundled with it (its
``code_paths``), built from its artifacts by ``load_context``. Nothing is unpickled.
"""

import mlflow.models

from medml.serving import MedmlClassifier

mlflow.models.set_model(MedmlClassifier())
