"""gcp-storage-emulator with the object preconditions of real GCS, for tests/test_bucket_e2e.py.

`python tests/gcs_emulator.py start --host=H --port=P --in-memory --default-bucket=B` runs the
emulator (same arguments). Real GCS answers a download with the object's generation in
`x-goog-generation`, `ifGenerationNotMatch=G` with 304 when G is current, and `ifGenerationMatch=G`
(0: "must not exist") with 412 otherwise. Orbax's OCDBT checkpoints (via tensorstore) depend on
these to commit a manifest; the emulator ignores them, so they are added here.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects  # before the server imports its route table


def _generation(storage, bucket, name) -> int:
  try:
    return int(storage.get_file_obj(bucket, name).get('generation') or 0)
  except NotFound:
    return 0


def _query_int(request, key):
  values = request.query.get(key)
  return int(values[0]) if values else None


_download, _insert = objects.download, objects.insert


def download(request, response, storage, *args, **kwargs):
  current = _generation(storage, request.params['bucket_name'], request.params['object_id'])
  not_match, match = _query_int(request, 'ifGenerationNotMatch'), _query_int(request, 'ifGenerationMatch')
  if current and not_match == current:
    response.status = HTTPStatus.NOT_MODIFIED
    response['x-goog-generation'] = str(current)
    return None
  if match is not None and match != current:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return None
  if current:
    response['x-goog-generation'] = str(current)
  return _download(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
  name, match = request.query.get('name'), _query_int(request, 'ifGenerationMatch')
  if name and match is not None and match != _generation(storage, request.params['bucket_name'], name[0]):
    response.status = HTTPStatus.PRECONDITION_FAILED
    return None
  return _insert(request, response, storage, *args, **kwargs)


objects.download, objects.insert = download, insert

if __name__ == '__main__':
  from gcp_storage_emulator import __main__ as emulator  # pylint: disable=import-outside-toplevel
  sys.exit(emulator.main(sys.argv[1:]))
