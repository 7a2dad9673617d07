"""atheris harness: hostile UK Biobank exports and targets tables through their readers.

Every input must end as a table or as one of MIMIR's own errors (`ExportFormatError` and other
`MimirError`s); any other exception is a crash: `mimir targets` would show a traceback.

Inputs are either raw bytes, or text tables built from real column names (ukbconv `21002-2.0`,
Research Analysis Platform `p21002_i2`, a targets table's catalog names) with hostile cells.
Run: python tests/fuzz/fuzz_export.py -max_total_time=60
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["mimir"]):
    from mimir.errors import MimirError
    from mimir.targets.exports import export_to_targets, read_targets_table

COLUMNS = [
    "eid", "participant.eid", "21002-2.0", "21002-3.0", "50-2.0", "31-0.0", "21003-2.0",
    "22407-2.0", "102-2.1", "p21002_i2", "participant.p50_i2", "p31", "instance", "weight",
    "height", "sex", "liverVolume", "AtlasVatVolume", "21002-2.0",
]
CELLS = [
    "", "NA", "nan", "inf", "-inf", "1e400", "-70", "-5000", "7", "0", "1", "75.5", "1000001",
    "1000001.5", "abc", '"', '""', "\t", "\x00", "2", "3", "9" * 40, "1,5", " 80 ", "true",
]


def text_table(provider: atheris.FuzzedDataProvider) -> bytes:
    delimiter = provider.PickValueInList([",", "\t", ";"])
    header = [provider.PickValueInList(COLUMNS) for _ in range(provider.ConsumeIntInRange(0, 6))]
    rows = [delimiter.join(header)]
    for _ in range(provider.ConsumeIntInRange(0, 6)):
        width = len(header) + provider.ConsumeIntInRange(-1, 1)
        rows.append(delimiter.join(provider.PickValueInList(CELLS) for _ in range(max(0, width))))
    return ("\n".join(rows) + ("\n" if provider.ConsumeBool() else "")).encode()


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    raw = provider.ConsumeIntInRange(0, 3) == 0
    reader = export_to_targets if provider.ConsumeBool() else read_targets_table
    content = provider.ConsumeBytes(4096) if raw else text_table(provider)
    handle, name = tempfile.mkstemp(suffix=".csv")
    try:
        os.write(handle, content)
        os.close(handle)
        try:
            reader(Path(name))
        except MimirError:
            pass
    finally:
        os.unlink(name)


def main() -> None:
    warnings.simplefilter("ignore")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
