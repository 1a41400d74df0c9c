"""An ONNX model as POST /v1/models/{name}/predict serves it: signature, input checks, answers.

Requests use MLflow's tensor input format: `{"inputs": {"<input name>": <nested list>}}`, or a
bare nested list for a model with one input. Answers are `{"outputs": {"<name>": <nested list>}}`;
classifiers add `labels` (the class name of each row) and `probabilities` (per class, per row).
JSON has no NaN or infinity, so an output value that is not finite is answered as null.

A registered model's MLmodel `metadata` may carry `task` ("classification" | "regression"),
`classes` (class names by output index), `input_ranges` ({input: [min, max]}, published, not
enforced) and `nan_inputs` ([input, ...]: inputs that take NaN or null as a missing value).
"""
