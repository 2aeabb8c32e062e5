#!/usr/bin/env python3
"""Independent reference S3 client (boto3) for bucketfs integration tests.

Reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION
from the environment; uses path-style addressing and signature v4.

usage:
  s3ref.py put BUCKET KEY                  body from stdin (bytes)
  s3ref.py get BUCKET KEY                  body to stdout (bytes)
  s3ref.py head BUCKET KEY                 JSON object {ContentLength, ETag, Metadata}
  s3ref.py list BUCKET PREFIX              JSON array of every key under PREFIX
  s3ref.py mpu BUCKET KEY PARTSIZE         multipart upload of stdin; prints the ETag
  s3ref.py uploads BUCKET PREFIX           JSON array of [key, upload_id] in progress
  s3ref.py create-uploads BUCKET PREFIX N  start N multipart uploads PREFIX0000..;
                                           prints a JSON array of [key, upload_id]

Exit status: 0 on success, 1 on an S3/botocore error (message on stderr),
2 on bad usage or missing environment.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.exceptions
from botocore.config import Config

ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def arg_text(arg):
    """The argument as the UTF-8 text the caller passed, whatever the locale."""
    return os.fsencode(arg).decode("utf-8")


def client(pool=10):
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        sys.stderr.write("s3ref.py: missing environment: " + ", ".join(missing) + "\n")
        sys.exit(2)
    options = dict(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=pool,
    )
    try:
        # Plain requests as a basic S3 client sends them: no extra CRC checksums
        # (botocore >= 1.36 adds them by default).
        cfg = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **options,
        )
    except TypeError:
        cfg = Config(**options)
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ["AWS_REGION"],
        config=cfg,
    )


def print_json(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def cmd_put(bucket, key):
    body = sys.stdin.buffer.read()
    client().put_object(Bucket=bucket, Key=key, Body=body)


def cmd_get(bucket, key):
    resp = client().get_object(Bucket=bucket, Key=key)
    out = sys.stdout.buffer
    for chunk in resp["Body"].iter_chunks(1 << 20):
        out.write(chunk)
    out.flush()


def cmd_head(bucket, key):
    resp = client().head_object(Bucket=bucket, Key=key)
    print_json(
        {
            "ContentLength": resp["ContentLength"],
            "ETag": resp["ETag"],
            "Metadata": resp.get("Metadata", {}),
        }
    )


def cmd_list(bucket, prefix):
    keys = []
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    print_json(keys)


def cmd_ls(bucket, prefix):
    """One line per object: size, ETag, key (what the demo shows)."""
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for o in page.get("Contents", []):
            print(f"{o['Size']:>12} {o['ETag'].strip(chr(34)):<40} {o['Key']}", flush=True)


def cmd_mpu(bucket, key, part_size):
    part_size = int(part_size)
    if part_size <= 0:
        raise ValueError("PARTSIZE must be positive")
    data = sys.stdin.buffer.read()
    s3 = client()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        # At least one part, even for an empty body.
        offsets = range(0, max(len(data), 1), part_size)
        for number, off in enumerate(offsets, start=1):
            resp = s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data[off : off + part_size],
            )
            parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        resp = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # best effort; report the original error
            pass
        raise
    print(resp["ETag"], flush=True)


def cmd_uploads(bucket, prefix):
    result = []
    pages = client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        result.extend([u["Key"], u["UploadId"]] for u in page.get("Uploads", []))
    print_json(result)


def cmd_create_uploads(bucket, prefix, count):
    count = int(count)
    if count < 0:
        raise ValueError("COUNT must be >= 0")
    s3 = client(pool=32)

    def create(i):
        key = f"{prefix}{i:04d}"
        return [key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]]

    with ThreadPoolExecutor(max_workers=16) as pool:
        result = list(pool.map(create, range(count)))
    print_json(result)


COMMANDS = {
    "put": (cmd_put, 2),
    "get": (cmd_get, 2),
    "head": (cmd_head, 2),
    "list": (cmd_list, 2),
    "ls": (cmd_ls, 2),
    "mpu": (cmd_mpu, 3),
    "uploads": (cmd_uploads, 2),
    "create-uploads": (cmd_create_uploads, 3),
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS or len(argv) - 2 != COMMANDS[argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    func, _ = COMMANDS[argv[1]]
    try:
        func(*[arg_text(a) for a in argv[2:]])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        sys.stderr.write(f"s3ref.py {argv[1]}: {type(err).__name__}: {err}\n")
        return 1
    except ValueError as err:
        sys.stderr.write(f"s3ref.py {argv[1]}: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
