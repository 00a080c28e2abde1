"""The load-test gate: the packaged model under real open-loop load, judged against SLOs."""
