#!/usr/bin/env python3
"""Pack the flannel-rs image as an OCI image layout in one tar (what `ctr images import`
takes): layer 1 the Debian rootfs mmdebstrap made, layer 2 the flannel-rs binaries plus
/usr/share/flannel-rs/{image-contents,packages}. Deterministic: every timestamp is
SOURCE_DATE_EPOCH, owners are 0, entries sorted, gzip without a name or time, so the same
inputs give the same digest."""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile


def contents(path):
    """(packages, binaries, entrypoint) from deploy/image-contents."""
    packages, binaries, entrypoint = [], [], None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2:
                raise SystemExit(f"{path}:{n}: want 'package|binary|entrypoint VALUE'")
            kind, value = words
            if kind == "package":
                packages.append(value)
            elif kind == "binary":
                binaries.append(value)
            elif kind == "entrypoint":
                entrypoint = value
            else:
                raise SystemExit(f"{path}:{n}: unknown entry {kind!r}")
    if entrypoint is None:
        raise SystemExit(f"{path}: no entrypoint")
    return packages, binaries, entrypoint


def installed_versions(rootfs):
    """Package<TAB>Version for every package installed in the rootfs, from dpkg's status."""
    with tarfile.open(rootfs) as t:
        status = t.extractfile("./var/lib/dpkg/status").read().decode()
    rows = []
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            rows.append(f"{fields['Package']}\t{fields['Version']}\n")
    return "".join(sorted(rows))


def entry(name, epoch, mode, size=0, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.size, info.type = epoch, mode, size, kind
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def flannel_layer(binaries, dist, contents_path, versions, epoch):
    files = {f"usr/bin/{b}": (open(os.path.join(dist, b), "rb").read(), 0o755) for b in binaries}
    files["usr/share/flannel-rs/image-contents"] = (open(contents_path, "rb").read(), 0o644)
    files["usr/share/flannel-rs/packages"] = (versions.encode(), 0o644)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(entry("usr/share/flannel-rs", epoch, 0o755, kind=tarfile.DIRTYPE))
        for name in sorted(files):
            data, mode = files[name]
            t.addfile(entry(name, epoch, mode, len(data)), io.BytesIO(data))
    return buf.getvalue()


def gz(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as g:
        g.write(data)
    return out.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--contents", required=True)
    p.add_argument("--dist", required=True)
    p.add_argument("--name", required=True, help="e.g. docker.io/library/flannel-rs")
    p.add_argument("--tag", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _, binaries, entrypoint = contents(a.contents)

    base = open(a.rootfs, "rb").read()
    versions = installed_versions(a.rootfs)
    ours = flannel_layer(binaries, a.dist, a.contents, versions, epoch)
    layers = [(base, gz(base)), (ours, gz(ours))]
    blobs = {}
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [entrypoint],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "flannel-rs",
                "org.opencontainers.image.version": a.tag,
                "io.flannel-rs.packages-sha256": hashlib.sha256(versions.encode()).hexdigest(),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(raw) for raw, _ in layers]},
        "history": [
            {"created": created, "created_by": "mmdebstrap --variant=essential (deploy/image-contents)"},
            {"created": created, "created_by": "flannel-rs binaries (deploy/image-contents)"},
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    blobs[sha(config_bytes)] = config_bytes
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [],
    }
    for _, packed in layers:
        blobs[sha(packed)] = packed
        manifest["layers"].append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(packed), "size": len(packed)}
        )
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    blobs[sha(manifest_bytes)] = manifest_bytes
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {
                    "org.opencontainers.image.ref.name": a.tag,
                    "io.containerd.image.name": f"{a.name}:{a.tag}",
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        for d in ["blobs", "blobs/sha256"]:
            t.addfile(entry(d, epoch, 0o755, kind=tarfile.DIRTYPE))
        for name in sorted(files):
            t.addfile(entry(name, epoch, 0o644, len(files[name])), io.BytesIO(files[name]))
    os.replace(tmp, a.out)
    size = sum(len(p) for _, p in layers)
    print(f"image {a.name}:{a.tag} {sha(manifest_bytes)}")
    print(f"layers (gzip) {size} bytes: rootfs {len(layers[0][1])}, flannel-rs {len(layers[1][1])}; unpacked {sum(len(r) for r, _ in layers)} bytes")


if __name__ == "__main__":
    main()
