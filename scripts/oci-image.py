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


def files_layer(files, links, epoch):
    """One layer from (source, path-in-image) files and (target, path) symlinks, with the
    directories they need."""
    entries = {}
    for src, dest in files:
        data = open(src, "rb").read()
        entries[dest.lstrip("/")] = ("file", data, 0o755 if os.access(src, os.X_OK) else 0o644)
    for target, dest in links:
        entries[dest.lstrip("/")] = ("link", target, 0o777)
    dirs = {os.path.dirname(name) for name in entries} - {""}
    for d in list(dirs):
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in sorted(dirs):
            t.addfile(entry(d, epoch, 0o755, kind=tarfile.DIRTYPE))
        for name in sorted(entries):
            kind, value, mode = entries[name]
            if kind == "file":
                t.addfile(entry(name, epoch, mode, len(value)), io.BytesIO(value))
            else:
                info = entry(name, epoch, mode, kind=tarfile.SYMTYPE)
                info.linkname = value
                t.addfile(info)
    return buf.getvalue()


def pair(text):
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: want SOURCE:PATH")
    return a, b


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rootfs", help="the flannel-rs image: mmdebstrap's rootfs tar")
    p.add_argument("--contents", help="the flannel-rs image: deploy/image-contents")
    p.add_argument("--dist", help="the flannel-rs image: where the binaries are")
    p.add_argument("--file", type=pair, action="append", default=[],
                   help="a one-layer image instead: SOURCE:PATH-IN-IMAGE (repeatable)")
    p.add_argument("--link", type=pair, action="append", default=[], help="TARGET:PATH symlink")
    p.add_argument("--entrypoint", help="a one-layer image's entrypoint")
    p.add_argument("--name", required=True, help="e.g. docker.io/library/flannel-rs")
    p.add_argument("--tag", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if a.file:
        if not a.entrypoint:
            raise SystemExit("--file needs --entrypoint")
        layer = files_layer(a.file, a.link, epoch)
        layers = [(layer, gz(layer))]
        image_config = {"Entrypoint": [a.entrypoint], "Env": ["PATH=/bin:/usr/bin"]}
        history = [{"created": created, "created_by": " ".join(dest for _, dest in a.file)}]
    else:
        if not (a.rootfs and a.contents and a.dist):
            raise SystemExit("want --rootfs, --contents and --dist (or --file)")
        _, binaries, entrypoint = contents(a.contents)
        base = open(a.rootfs, "rb").read()
        versions = installed_versions(a.rootfs)
        ours = flannel_layer(binaries, a.dist, a.contents, versions, epoch)
        layers = [(base, gz(base)), (ours, gz(ours))]
        image_config = {
            "Entrypoint": [entrypoint],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "flannel-rs",
                "org.opencontainers.image.version": a.tag,
                "io.flannel-rs.packages-sha256": hashlib.sha256(versions.encode()).hexdigest(),
            },
        }
        history = [
            {"created": created, "created_by": "mmdebstrap --variant=essential (deploy/image-contents)"},
            {"created": created, "created_by": "flannel-rs binaries (deploy/image-contents)"},
        ]
    manifest_digest = write_archive(layers, image_config, history, created, a, epoch)
    size = sum(len(p) for _, p in layers)
    print(f"image {a.name}:{a.tag} {manifest_digest}")
    print(f"layers (gzip) {size} bytes: {', '.join(str(len(p)) for _, p in layers)}; unpacked {sum(len(r) for r, _ in layers)} bytes")


def write_archive(layers, image_config, history, created, a, epoch):
    """The OCI layout (index, manifest, config, layers) as one tar at a.out; the manifest's
    digest."""
    blobs = {}
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [sha(raw) for raw, _ in layers]},
        "history": history,
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
    return sha(manifest_bytes)


if __name__ == "__main__":
    main()
