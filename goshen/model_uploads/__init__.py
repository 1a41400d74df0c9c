"""User-uploaded ONNX models, checked in a child process before the platform keeps any of them.

The child runs with its address space capped (RLIMIT_AS) and is killed after a timeout, so a file
built to exhaust memory or to take forever to load costs one bounded process. It checks, in order:

- the file is a serialized ONNX ModelProto: pickles, PyTorch checkpoints (zip or pickle) and
  other formats are refused by their first bytes, before anything parses them;
- every op is standard: node domains and op-set imports are "" / "ai.onnx" or "ai.onnx.ml", in
  the main graph, every If/Loop/Scan subgraph and every local function. A node may also call a
  function the model itself defines, in a domain of its own; that domain may not be one ONNX
  Runtime ships kernels for (com.microsoft, ai.onnx.*, ...), whose kernel would run instead of
  the function's body. "ai.onnx.preview.training" is refused: it holds training ops only;
- external data: every tensor stored outside the file (initializers, sparse initializers,
  Constant and other tensor attributes, function attribute defaults, in subgraphs too) names a
  relative `location` without "..", NUL or backslashes that resolves, links followed, to an
  existing file inside the model file's folder, and its offset and length lie within that file;
  the model and its external files together fit in `max_bytes`;
- `onnx.checker.check_model(full_check=True)`, then ONNX Runtime builds a CPU session;
- every input and output is a numeric or boolean tensor, which /predict can carry in JSON;
- the model answers its example input (one row, as GET /v1/models/{name} will publish it), here
  under the caps: a graph built to allocate without bound or to loop forever on being run fails
  in this child, not later in the API process that serves it.
"""
