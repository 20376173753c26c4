"""The command layer: argument parsing and the wiring of one command across the layers below it.

`mscvision.cli` (the console script) and the modules here sit on top of every other package: a
command may call training and then export, while training never imports export. Modules here
import only argparse and the stdlib at the top, so `mscvision --help` stays fast; each handler
imports its layers when it runs. The station's commands (`predict`, `info`, `verify`) are still in
`runtime/commands.py` (see docs/architecture.md).
"""
