import gc
import sys

from deploy.cli import main

status = main()
# Skip collecting MLflow's and scikit-learn's object graphs at interpreter exit: about 1 s a command.
gc.freeze()
sys.exit(status)
