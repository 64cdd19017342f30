"""The recipes: one file a recipe with `get_config(variant)`, shared defaults in `configs.common`.

A package so that recipes import `configs.common` (`load_config` loads a file here as `configs.<name>`, installed or
not) and user code can `import configs.pretrain_warp` after `make install`.
"""
