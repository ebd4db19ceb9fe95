"""An env module that fails while it is imported ('tests._import_failing_env:Any-v0')."""

raise RuntimeError("this env module is broken")
