# One rule per figure and table: cells -> results/<name>.csv (+ paper_figures/<name>.pdf/png).


def cells_of(experiment):
    return sorted({c.target for c in REG.cells[experiment]})


REPORT = "{PY} -m pipeline.report {rule} --cells {input} --csv {output.csv}"
REPORT_FIG = REPORT + " --figure {output.pdf}"


rule fig1:
    input: cells_of("fig1")
    output: csv="results/fig1.csv", pdf="paper_figures/fig1.pdf", png="paper_figures/fig1.png"
    localrule: True
    shell: REPORT_FIG


rule fig2:
    input: cells_of("fig2")
    output: csv="results/fig2.csv", pdf="paper_figures/fig2.pdf", png="paper_figures/fig2.png"
    localrule: True
    shell: REPORT_FIG


rule fig4:
    input: cells_of("fig4")
    output: csv="results/fig4.csv", pdf="paper_figures/fig4.pdf", png="paper_figures/fig4.png"
    localrule: True
    shell: REPORT_FIG


rule fig5:
    input: cells_of("fig5")
    output: csv="results/fig5.csv", pdf="paper_figures/fig5.pdf", png="paper_figures/fig5.png"
    localrule: True
    shell: REPORT_FIG


rule fig6:
    input: cells_of("fig6")
    output: csv="results/fig6.csv", pdf="paper_figures/fig6.pdf", png="paper_figures/fig6.png"
    localrule: True
    shell: REPORT_FIG


rule fig7:
    input: cells_of("fig7")
    output: csv="results/fig7.csv", pdf="paper_figures/fig7.pdf", png="paper_figures/fig7.png"
    localrule: True
    shell: REPORT_FIG


rule table1:
    input: cells_of("table1")
    output: csv="results/table1.csv"
    localrule: True
    shell: REPORT


rule table2:
    input: cells_of("table2")
    output: csv="results/table2.csv"
    localrule: True
    shell: REPORT


rule table3:
    input: cells_of("table3")
    output: csv="results/table3.csv"
    localrule: True
    shell: REPORT


ALL_TARGETS.extend(
    [f"results/{name}.csv" for name in ("fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "table1", "table2", "table3")]
    + [f"paper_figures/{name}.{ext}" for name in ("fig1", "fig2", "fig4", "fig5", "fig6", "fig7") for ext in ("pdf", "png")]
)


rule audit:
    input:
        tables=[f"results/{name}.csv" for name in ("fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "table1", "table2", "table3")],
        claims=BASE / "config" / "claims.yaml",
        fig3=BASE / "config" / "figures" / "fig3.yaml",
    output:
        "results/audit.csv",
    localrule: True
    shell:
        "{PY} -m pipeline.audit --results results --claims {input.claims} --fig3-config {input.fig3} --out {output}"


ALL_TARGETS.append("results/audit.csv")
