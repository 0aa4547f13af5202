"""Every environment variable SampleIQA reads or sets, named once.

(A repository's `model.py` files read SITE_DIRS by its literal name, which build/repository.py
writes into them: they run before any sampleiqa module can be imported, which is what that
variable makes possible.)
"""

MAX_BYTES = "SAMPLEIQA_MAX_BYTES"  # encoded-input byte limit (`serve --max-bytes` sets it for the stubs)
MAX_PIXELS = "SAMPLEIQA_MAX_PIXELS"  # decoded-pixel limit (`serve --max-pixels`)
LIMITS_PREFIX = "SAMPLEIQA_MAX_"  # the limits, as the Ray engine forwards them to its workers
SITE_DIRS = "SAMPLEIQA_SITE_DIRS"  # the launcher's site-packages, for the python stubs (they embed libpython)
ADMIN_KEY = "SAMPLEIQA_ADMIN_KEY"  # the header value that unlocks Triton's restricted APIs
HTTP_OPEN = "SAMPLEIQA_HTTP_OPEN"  # HTTP API groups left open without the key (e.g. "health" for probes)
TRITONSERVER_DIR = "SAMPLEIQA_TRITONSERVER_DIR"  # another Triton install (NVIDIA's image) instead of the wheel's
CACHE = "SAMPLEIQA_CACHE"  # training's crop and trunk-output caches
DATA = "SAMPLEIQA_DATA"  # the labelled photos' root (default ../shared/data)
