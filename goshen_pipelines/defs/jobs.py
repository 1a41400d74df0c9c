"""Jobs: the built-in models end to end, and one training job's run.

Both run their steps in the run's own process: a step process per asset would import PyTorch,
diffusers and MLflow again each time, and write the instance's SQLite from several processes.
"""

import dagster as dg

from goshen_pipelines.defs.training.assets import training_job_partitions

digits_models_job = dg.define_asset_job(
    "digits_models",
    selection=[
        "digits_dataset",
        "digits_classifier",
        "digits_diffusion",
        "digits_classifier_onnx",
        "digits_diffusion_onnx",
        "digits_classifier_production",
        "digits_diffusion_production",
    ],
    description="Train, export, check, register and promote the built-in digits models.",
    executor_def=dg.in_process_executor,
)

training_run_job = dg.define_asset_job(
    "training_run_job",
    selection=["training_run", "training_run_onnx", "training_run_production"],
    partitions_def=training_job_partitions,
    description="One training job from the API: train, export, check, register, promote.",
    executor_def=dg.in_process_executor,
)
