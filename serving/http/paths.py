"""Path parameters that name an object: ids (`job_` and 26 characters of Crockford's base 32)
and catalog names, each with the pattern the OpenAPI document publishes.

A malformed one names nothing: serving.http.problems answers it 404, as it does an unknown one,
before the route runs any query with it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from goshen.ids import id_pattern
from serving.schemas import CATALOG_NAME_PATTERN

JobId = Annotated[str, Path(pattern=id_pattern("job"), description="a job id, `job_...`")]
TrainingJobId = Annotated[
    str, Path(pattern=id_pattern("trn"), description="a training job id, `trn_...`")
]
DatasetId = Annotated[str, Path(pattern=id_pattern("ds"), description="a dataset id, `ds_...`")]
KeyId = Annotated[str, Path(pattern=id_pattern("key"), description="an API key id, `key_...`")]
UserId = Annotated[str, Path(pattern=id_pattern("usr"), description="a user id, `usr_...`")]
InvoiceId = Annotated[str, Path(pattern=id_pattern("inv"), description="an invoice id, `inv_...`")]
ModelName = Annotated[
    str,
    Path(pattern=CATALOG_NAME_PATTERN, description="a catalog model name, as GET /v1/models lists"),
]
