"""The embedded demo CT and chest X-ray as Slicer SampleData sources (pure: builds the arguments; Python 3.9).

Slicer's SampleData module (Slicer/Slicer, Modules/Scripted/SampleData/SampleData.py, read at commit 07c5324cd4af;
``SampleDataLogic.registerCustomSampleDataSource(category, sampleName, uris, fileNames, nodeNames, customDownloader,
thumbnailFileName, loadFileTypes, loadFiles, loadFileProperties, checksums, loadFileType)``; older releases have
``loadFileType='VolumeFile'`` in place of ``loadFileTypes``; every argument is passed by keyword here) downloads each
``uri`` into its cache
(``urllib`` also reads ``file://`` URIs, so the files shipped with the extension need no network), checks the
``SHA256:<digest>`` checksum and loads the file with the named reader. ``loadFileType`` is used, not the newer
``loadFileTypes``: the newest SampleData still accepts it (mapped to ``loadFileTypes``) and older releases know only it.
Registered at ``startupCompleted()`` by XWinSlicer.py, as Slicer's module template does.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

CATEGORY = "XWin"
#: (sample name, file in xwin/sample_data, node name)
SAMPLES = (
    ("XWin demo CT", "lidc_idri_0001_ct_small.nii.gz", "XWinDemoCT"),
    ("XWin demo chest X-ray", "nema_wg04_rg1_chest_cr_j2k.dcm", "XWinDemoCXR"),
)


def sample_folder(shared_folder: Path | None) -> Path | None:
    folder = Path(shared_folder) / "XWinCore" / "xwin" / "sample_data" if shared_folder else None
    return folder if folder is not None and folder.is_dir() else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_data_sources(shared_folder: Path | None, thumbnail: Path | None = None) -> list[dict]:
    """Keyword arguments for ``registerCustomSampleDataSource``, one dict per sample present (none without the
    shared folder)."""
    folder = sample_folder(shared_folder)
    out = []
    for name, file_name, node_name in SAMPLES if folder else ():
        path = folder / file_name
        if not path.is_file():
            continue
        out.append(dict(category=CATEGORY, sampleName=name, uris=path.resolve().as_uri(), fileNames=file_name,
                        nodeNames=node_name, loadFileType="VolumeFile", checksums=f"SHA256:{sha256(path)}",
                        thumbnailFileName=str(thumbnail) if thumbnail else None))
    return out
