"""The drift monitor: Evidently on the live inference log, rollback when a model drifts."""
