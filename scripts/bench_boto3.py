"""Helper of scripts/bench.sh: the direct boto3 baseline and S3-side checks.

    bench_boto3.py mb BUCKET                 create a bucket
    bench_boto3.py put BUCKET KEY FILE       multipart upload, 8 MiB parts, 4 threads
    bench_boto3.py get BUCKET KEY            download to nowhere, 8 MiB ranges, 4 threads
    bench_boto3.py size BUCKET KEY           print the object's size (or -1)
    bench_boto3.py count BUCKET PREFIX       print how many objects (not directory markers) are under PREFIX
    bench_boto3.py fill BUCKET PREFIX N      store N objects of 100 bytes, PREFIX00000..., 32 at a time
    bench_boto3.py copyparts BUCKET KEY      a new object made of KEY by UploadPartCopy, 8 MiB
                                             parts, 2 at a time (the server's floor for a new
                                             version composed from an old one); prints seconds
    bench_boto3.py md5 BUCKET KEY            print the hex MD5 of the object's bytes

put and get print "<seconds> <cpu seconds> <peak rss KiB>". Endpoint and
credentials come from the AWS_* environment, as for any boto3 program.
"""

import os
import resource
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=8 * MIB,
    multipart_chunksize=8 * MIB,
    max_concurrency=4,
    use_threads=True,
)


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


class Sink:
    def write(self, b):
        return len(b)


def report(start):
    took = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{took:.3f} {ru.ru_utime + ru.ru_stime:.2f} {ru.ru_maxrss}")


def main(argv):
    cmd, args = argv[1], argv[2:]
    s3 = client()
    if cmd == "mb":
        s3.create_bucket(Bucket=args[0])
    elif cmd == "put":
        start = time.monotonic()
        s3.upload_file(args[2], args[0], args[1], Config=TRANSFER)
        report(start)
    elif cmd == "get":
        start = time.monotonic()
        s3.download_fileobj(args[0], args[1], Sink(), Config=TRANSFER)
        report(start)
    elif cmd == "size":
        try:
            print(s3.head_object(Bucket=args[0], Key=args[1])["ContentLength"])
        except s3.exceptions.ClientError:
            print(-1)
    elif cmd == "count":
        n = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
            n += sum(1 for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        print(n)
    elif cmd == "fill":
        from concurrent.futures import ThreadPoolExecutor

        body = b"x" * 100
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=args[0], Key=f"{args[1]}{i:05d}", Body=body),
                          range(int(args[2]))))
    elif cmd == "copyparts":
        from concurrent.futures import ThreadPoolExecutor

        size = s3.head_object(Bucket=args[0], Key=args[1])["ContentLength"]
        start = time.monotonic()
        up = s3.create_multipart_upload(Bucket=args[0], Key=args[1] + ".copyparts")["UploadId"]

        def part(n):
            first = (n - 1) * 8 * MIB
            last = min(first + 8 * MIB, size) - 1
            r = s3.upload_part_copy(Bucket=args[0], Key=args[1] + ".copyparts", UploadId=up, PartNumber=n,
                                    CopySource={"Bucket": args[0], "Key": args[1]},
                                    CopySourceRange=f"bytes={first}-{last}")
            return {"ETag": r["CopyPartResult"]["ETag"], "PartNumber": n}

        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(part, range(1, (size + 8 * MIB - 1) // (8 * MIB) + 1)))
        s3.complete_multipart_upload(Bucket=args[0], Key=args[1] + ".copyparts", UploadId=up,
                                     MultipartUpload={"Parts": parts})
        print(f"{time.monotonic() - start:.2f}")
        s3.delete_object(Bucket=args[0], Key=args[1] + ".copyparts")
    elif cmd == "md5":
        import hashlib

        h = hashlib.md5()
        for chunk in s3.get_object(Bucket=args[0], Key=args[1])["Body"].iter_chunks(8 * MIB):
            h.update(chunk)
        print(h.hexdigest())
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
