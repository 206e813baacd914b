//! `compute_ctl plan`: what an apply of a spec would run against a running Postgres, printed
//! phase by phase, with nothing run. The statements come from the same planner the apply
//! executes ([`crate::postgres::apply::plan`]); only catalog reads reach Postgres.

use crate::args::{PlanArgs, PlanSpec};
use crate::error::{Error, Result};
use crate::postgres::apply::plan::{self, DryRun};
use crate::spec::{ComputeMode, ConfigurationRequest, ParsedSpec};
use std::io::Write;

/// Exit code when the plan has something to do.
pub const CHANGES: i32 = 2;

/// Reads the spec, plans, prints to `out`; 0 when nothing would change, [`CHANGES`] otherwise.
pub fn run(args: &PlanArgs, out: &mut dyn Write) -> Result<i32> {
    let spec = read_spec(&args.spec)?;
    let s = spec.spec();
    let dry = if s.skip_pg_catalog_updates || s.mode != ComputeMode::Primary {
        DryRun {
            notes: vec!["the spec asks for no catalog updates (skip_pg_catalog_updates, or not a primary)".into()],
            ..DryRun::default()
        }
    } else {
        plan::dry_run(&args.connstr, s, &args.privileged_role_name)?
    };
    let text = render(&dry);
    out.write_all(text.as_bytes()).map_err(|e| Error::io("cannot write the plan to", "stdout", e))?;
    Ok(if dry.changes() { CHANGES } else { 0 })
}

fn read_spec(source: &PlanSpec) -> Result<ParsedSpec> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| Error::io("cannot read spec file", p, e));
    match source {
        PlanSpec::Inline(json) => ParsedSpec::parse(json),
        PlanSpec::File(path) => ParsedSpec::parse(&read(path)?),
        PlanSpec::Config(path) => {
            let req: ConfigurationRequest = serde_json::from_str(&read(path)?).map_err(Error::SpecJson)?;
            ParsedSpec::validate(req.spec)
        }
    }
}

/// One `-- phase (database "db")` header whenever either changes, then the statements, each
/// ending with `;`; notes and a count last.
pub fn render(dry: &DryRun) -> String {
    let mut text = String::new();
    let mut current: Option<(&str, &str)> = None;
    for s in &dry.statements {
        if current != Some((s.phase, s.db.as_str())) {
            text.push_str(&format!("-- {} (database {:?})\n", s.phase, s.db));
            current = Some((s.phase, s.db.as_str()));
        }
        text.push_str(&s.sql);
        text.push_str(";\n");
    }
    for db in &dry.created_later {
        text.push_str(&format!(
            "-- note: database {db:?} is created above; its schema public is planned once it exists\n"
        ));
    }
    for n in &dry.notes {
        text.push_str(&format!("-- note: {n}\n"));
    }
    match dry.statements.len() {
        0 => text.push_str("-- nothing to run\n"),
        n => text.push_str(&format!("-- {n} statements would run\n")),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::apply::plan::Planned;

    #[test]
    fn render_groups_by_phase_and_database() {
        let p = |phase, db: &str, sql: &str| Planned { phase, db: db.into(), sql: sql.into() };
        let dry = DryRun {
            statements: vec![
                p("create_and_alter_roles", "postgres", "CREATE ROLE \"a\""),
                p("create_and_alter_roles", "postgres", "CREATE ROLE \"b\""),
                p("change_schema_perms", "d", "GRANT CREATE ON SCHEMA public TO web_access"),
            ],
            created_later: vec![],
            notes: vec!["x".into()],
        };
        assert_eq!(
            render(&dry),
            "-- create_and_alter_roles (database \"postgres\")\nCREATE ROLE \"a\";\nCREATE ROLE \"b\";\n\
             -- change_schema_perms (database \"d\")\nGRANT CREATE ON SCHEMA public TO web_access;\n\
             -- note: x\n-- 3 statements would run\n"
        );
        assert_eq!(render(&DryRun::default()), "-- nothing to run\n");
    }
}
