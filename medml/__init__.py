"""medml: train, evaluate and ship image classifiers for imbalanced medical imaging data.

The package is a plain library of step functions (ingest, validate, split, preprocess, train,
evaluate, register). The CLI, DVC and Airflow all call the same functions; nothing here
imports Airflow.
"""

from medml import quiet_import
from medml.settings import set_library_defaults

__version__ = "0.1.0"

# OpenCV reads its pixel limit once, when the library loads: set it before anything imports
# cv2 (medml.data.images.MAX_PIXELS is the same figure; a test keeps them equal).
set_library_defaults(("OPENCV_IO_MAX_IMAGE_PIXELS",))

# TensorFlow writes C++ notices to raw stderr while it imports (an ERROR line each in an Airflow
# task log): they go through logging instead.
quiet_import.install()
