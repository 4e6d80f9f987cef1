"""Write fhir_server/data/choice-elements.json: the base names of R4B choice elements ([x]).

    python tools/extract_choice_elements.py

Read from the fhir.resources R4B models (each choice field carries its `one_of_many` base
name), so the FHIRPath extractors only look for `valueQuantity` behind `value` where the
standard has a `value[x]`, instead of scanning every element's keys.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import fhir.resources.R4B as r4b
from pydantic import BaseModel

OUT = Path(__file__).resolve().parents[1] / "fhir_server" / "data" / "choice-elements.json"


def main() -> None:
    names: set[str] = set()
    for info in pkgutil.iter_modules(r4b.__path__):
        module = importlib.import_module(f"{r4b.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                for field in value.model_fields.values():
                    extra = field.json_schema_extra
                    if isinstance(extra, dict) and isinstance(extra.get("one_of_many"), str):
                        names.add(extra["one_of_many"])
    OUT.write_text(
        json.dumps(
            {"source": f"fhir.resources R4B {r4b.__fhir_version__}", "names": sorted(names)},
            indent=0,
        )
        + "\n"
    )
    print(f"{len(names)} choice elements -> {OUT}")


if __name__ == "__main__":
    main()
