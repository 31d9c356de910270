# Figure 3 (Sections 2-3): SNR PDFs of the four schedules (Eq. 7, Algorithm 1), uniform and lognorm views.
# CPU only, seconds; no training needed. The config block lives in config/figures/fig3.yaml and is merged
# into config["fig3"] here (`--config fig3=...` keys override the file's; the result is schema-checked).
# Uses ALL_TARGETS from the Snakefile.

import json

from pipeline.config import ConfigError, config_error_exit, merge_fig3

try:
    config["fig3"] = merge_fig3(config.get("fig3"))
except ConfigError as _err:
    config_error_exit(_err)
FIG3 = config["fig3"]
FIG3_FIGURES = expand(in_scale("paper_figures/{view}.{ext}"), view=[v["name"] for v in FIG3["views"]], ext=["pdf", "png"])


rule fig3:
    input:
        code=[BASE / f for f in ("models/snr.py", "models/schedules.py", "models/timesteps.py", "pipeline/figures/fig3.py")],
        best_std_results=fig3_best_std_results,
    output:
        figures=[report(f, category="fig3", caption="../report/fig3.rst") for f in FIG3_FIGURES],
        csv=report(in_scale("results/fig3.csv"), category="fig3", caption="../report/fig3.rst"),
        summary=in_scale("results/fig3_summary.json"),
    params:
        config_json=json.dumps(FIG3, sort_keys=True),
        best_std_flag=lambda wildcards, input: (
            ["--best-std-results", input.best_std_results[0]] if input.best_std_results else []
        ),
        fig_dir=in_scale("paper_figures/"),
    log:
        in_scale("work/logs/report/fig3.log"),
    localrule: True
    shell:
        "python -m pipeline.figures.fig3 --config-json {params.config_json:q} {params.best_std_flag:q}"
        " --fig-dir {params.fig_dir:q} --csv {output.csv:q} --summary {output.summary:q} > {log:q} 2>&1"


ALL_TARGETS.extend(FIG3_FIGURES + [in_scale("results/fig3.csv"), in_scale("results/fig3_summary.json")])
