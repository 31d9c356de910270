# One rule per figure and table: cells -> results/<name>.csv (+ paper_figures/<name>.pdf/png).


def cells_of(experiment):
    return sorted({c.target for c in REG.cells[experiment]})


REPORT = "{PY} -m pipeline.report {rule} --cells {input} --csv {output.csv}"
REPORT_FIG = REPORT + " --figure {output.pdf}"


rule fig1:
    input: cells_of("fig1")
    output: csv=report("results/fig1.csv", category="fig1"), pdf="paper_figures/fig1.pdf", png=report("paper_figures/fig1.png", category="fig1")
    localrule: True
    shell: REPORT_FIG


rule fig2:
    input: cells_of("fig2")
    output: csv=report("results/fig2.csv", category="fig2"), pdf="paper_figures/fig2.pdf", png=report("paper_figures/fig2.png", category="fig2")
    localrule: True
    shell: REPORT_FIG


rule fig4:
    input: cells_of("fig4")
    output: csv=report("results/fig4.csv", category="fig4"), pdf="paper_figures/fig4.pdf", png=report("paper_figures/fig4.png", category="fig4")
    localrule: True
    shell: REPORT_FIG


rule fig5:
    input: cells_of("fig5")
    output: csv=report("results/fig5.csv", category="fig5"), pdf="paper_figures/fig5.pdf", png=report("paper_figures/fig5.png", category="fig5")
    localrule: True
    shell: REPORT_FIG


rule fig6:
    input: cells_of("fig6")
    output: csv=report("results/fig6.csv", category="fig6"), pdf="paper_figures/fig6.pdf", png=report("paper_figures/fig6.png", category="fig6")
    localrule: True
    shell: REPORT_FIG


rule fig7:
    input: cells_of("fig7")
    output: csv=report("results/fig7.csv", category="fig7"), pdf="paper_figures/fig7.pdf", png=report("paper_figures/fig7.png", category="fig7")
    localrule: True
    shell: REPORT_FIG


rule table1:
    input: cells_of("table1")
    output: csv=report("results/table1.csv", category="table1")
    localrule: True
    shell: REPORT


rule table2:
    input: cells_of("table2")
    output: csv=report("results/table2.csv", category="table2")
    localrule: True
    shell: REPORT


rule table3:
    input: cells_of("table3")
    output: csv=report("results/table3.csv", category="table3")
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
        report("results/audit.csv", category="audit", caption="../report/audit.rst"),
    localrule: True
    shell:
        "{PY} -m pipeline.audit --results results --claims {input.claims} --fig3-config {input.fig3} --out {output}"


ALL_TARGETS.append("results/audit.csv")
