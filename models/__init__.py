"""Reference models, datasets and registered study tasks for hwsim.

Importable from the repository root (``import models.lms``); the study engine
imports ``models.tasks`` to register the tasks.
"""
