//! From "run TASK in these packages" to a task graph: resolved commands, configs and edges.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use crate::command::{CommandItem, parse_command};
use crate::config::TaskConfig;
use crate::error::PlanError;
use crate::workspace::Workspace;

/// One task of the plan: a package's script or `baton.json` task.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    /// Index in [`Plan::tasks`].
    pub index: usize,
    /// Package index in the workspace.
    pub package: usize,
    /// `pkg#task`.
    pub id: String,
    /// Task name.
    pub name: String,
    /// The command text as written.
    pub command: String,
    /// Command items (`a && b` → two).
    pub items: Vec<CommandItem>,
    /// Absolute working directory.
    pub cwd: PathBuf,
    /// Effective configuration (package entry over root `taskDefaults`).
    pub config: TaskConfig,
    /// Indices of tasks that must finish first.
    pub deps: Vec<usize>,
    /// Whether this task was asked for (as opposed to pulled in by `dependsOn`).
    pub requested: bool,
    /// Extra command-line arguments, appended to the last item (requested tasks only).
    pub extra_args: Vec<String>,
}

/// A task graph, topologically ordered: every task comes after its dependencies.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Tasks in a topological order.
    pub tasks: Vec<PlannedTask>,
}

/// What to plan.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    /// Task name, possibly `pkg#task`.
    pub task: String,
    /// Selected package indices (ignored when `task` names a package).
    pub packages: BTreeSet<usize>,
    /// Whether tasks of selected packages are ordered by package dependencies (`-r`, `--filter`).
    pub topological: bool,
    /// Extra arguments for the requested tasks.
    pub extra_args: Vec<String>,
}

/// Resolved definition of a task in a package, if it has one.
pub fn resolve_task(
    ws: &Workspace,
    package: usize,
    name: &str,
) -> Result<Option<(String, TaskConfig)>, PlanError> {
    let p = &ws.packages[package];
    let own = p.config.as_ref().and_then(|c| c.tasks.get(name));
    let defaults = ws.task_defaults.get(name);
    let script = p.scripts.get(name);
    let command = match (script, own.and_then(|c| c.command.as_ref())) {
        (Some(_), Some(_)) => {
            return Err(PlanError::CommandConflict {
                package: p.name.clone(),
                task: name.to_owned(),
                package_json: p.dir.join("package.json"),
                baton_json: p.dir.join("baton.json"),
            });
        }
        (Some(s), None) => s.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => return Ok(None),
    };
    let empty = TaskConfig::default();
    let cfg = own
        .cloned()
        .unwrap_or_default()
        .merged_over(defaults.unwrap_or(&empty));
    Ok(Some((command, cfg)))
}

fn task_names(ws: &Workspace, package: usize) -> Vec<String> {
    let p = &ws.packages[package];
    let mut v: BTreeSet<String> = p.scripts.keys().cloned().collect();
    if let Some(c) = &p.config {
        v.extend(
            c.tasks
                .iter()
                .filter(|(_, t)| t.command.is_some())
                .map(|(k, _)| k.clone()),
        );
    }
    v.into_iter().collect()
}

struct Builder<'a> {
    ws: &'a Workspace,
    index: HashMap<(usize, String), usize>,
    nodes: Vec<PlannedTask>,
    edges: Vec<BTreeSet<usize>>,
}

impl<'a> Builder<'a> {
    /// Adds (package, name) and, recursively, its `dependsOn`. Returns `None` if undefined.
    fn add(&mut self, package: usize, name: &str) -> Result<Option<usize>, PlanError> {
        if let Some(&i) = self.index.get(&(package, name.to_owned())) {
            return Ok(Some(i));
        }
        let Some((command, config)) = resolve_task(self.ws, package, name)? else {
            return Ok(None);
        };
        let p = &self.ws.packages[package];
        let id = format!("{}#{}", p.name, name);
        let items = parse_command(&command).map_err(|message| PlanError::BadCommand {
            task: id.clone(),
            command: command.clone(),
            message,
        })?;
        let cwd = match &config.cwd {
            Some(c) => crate::filter::normalize(&p.dir.join(c)),
            None => p.dir.clone(),
        };
        let idx = self.nodes.len();
        self.index.insert((package, name.to_owned()), idx);
        self.nodes.push(PlannedTask {
            index: idx,
            package,
            id,
            name: name.to_owned(),
            command,
            items,
            cwd,
            config: config.clone(),
            deps: Vec::new(),
            requested: false,
            extra_args: Vec::new(),
        });
        self.edges.push(BTreeSet::new());
        for dep in config.depends_on.iter().flatten() {
            let targets = self.depends_on_targets(package, dep)?;
            for t in targets {
                self.edges[idx].insert(t);
            }
        }
        Ok(Some(idx))
    }

    fn depends_on_targets(&mut self, package: usize, dep: &str) -> Result<Vec<usize>, PlanError> {
        if let Some(task) = dep.strip_prefix('^') {
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            let mut stack: Vec<usize> = self.ws.packages[package].deps.clone();
            // Look through dependency packages lacking the task to their own dependencies.
            while let Some(d) = stack.pop() {
                if !seen.insert(d) {
                    continue;
                }
                match self.add(d, task)? {
                    Some(i) => out.push(i),
                    None => stack.extend(self.ws.packages[d].deps.iter().copied()),
                }
            }
            return Ok(out);
        }
        if let Some((pkg, task)) = split_pkg_task(dep) {
            let Some(&pi) = self.ws.by_name.get(pkg) else {
                return Err(PlanError::UnknownPackage(pkg.to_owned()));
            };
            return match self.add(pi, task)? {
                Some(i) => Ok(vec![i]),
                None => Err(self.unknown(pi, task)),
            };
        }
        match self.add(package, dep)? {
            Some(i) => Ok(vec![i]),
            None => Err(self.unknown(package, dep)),
        }
    }

    fn unknown(&self, package: usize, task: &str) -> PlanError {
        let names = task_names(self.ws, package);
        PlanError::UnknownTask {
            task: task.to_owned(),
            package: self.ws.packages[package].name.clone(),
            hint: if names.is_empty() {
                " (it has no tasks)".into()
            } else {
                format!(", available: {}", names.join(", "))
            },
        }
    }
}

/// `pkg#task` → (`pkg`, `task`); scoped names like `@s/p#build` work.
pub fn split_pkg_task(s: &str) -> Option<(&str, &str)> {
    let pos = s.rfind('#')?;
    let (p, t) = (&s[..pos], &s[pos + 1..]);
    (!p.is_empty() && !t.is_empty()).then_some((p, t))
}

/// Builds the plan. Errors: unknown task or package, command conflicts, cycles.
pub fn build_plan(ws: &Workspace, req: &PlanRequest) -> Result<Plan, PlanError> {
    let mut b = Builder {
        ws,
        index: HashMap::new(),
        nodes: Vec::new(),
        edges: Vec::new(),
    };
    let mut requested: Vec<usize> = Vec::new();
    if let Some((pkg, task)) = split_pkg_task(&req.task) {
        let Some(&pi) = ws.by_name.get(pkg) else {
            return Err(PlanError::UnknownPackage(pkg.to_owned()));
        };
        match b.add(pi, task)? {
            Some(i) => requested.push(i),
            None => return Err(b.unknown(pi, task)),
        }
    } else {
        let single = req.packages.len() == 1;
        for &pi in &req.packages {
            match b.add(pi, &req.task)? {
                Some(i) => requested.push(i),
                None if single => return Err(b.unknown(pi, &req.task)),
                None => {}
            }
        }
        if requested.is_empty() {
            return Err(PlanError::NothingToRun(req.task.clone()));
        }
        if req.topological {
            // Order selected packages' tasks by package dependencies, looking through packages
            // that lack the task.
            let by_pkg: BTreeMap<usize, usize> =
                requested.iter().map(|&t| (b.nodes[t].package, t)).collect();
            for &t in &requested {
                let pkg = b.nodes[t].package;
                let mut seen = BTreeSet::new();
                let mut stack = ws.packages[pkg].deps.clone();
                while let Some(d) = stack.pop() {
                    if !seen.insert(d) {
                        continue;
                    }
                    match by_pkg.get(&d) {
                        Some(&dt) => {
                            b.edges[t].insert(dt);
                        }
                        None => stack.extend(ws.packages[d].deps.iter().copied()),
                    }
                }
            }
        }
    }
    for &r in &requested {
        b.nodes[r].requested = true;
        b.nodes[r].extra_args = req.extra_args.clone();
    }
    for (i, e) in b.edges.iter().enumerate() {
        b.nodes[i].deps = e.iter().copied().collect();
    }
    topo_sort(b.nodes)
}

/// Orders tasks so dependencies come first; reports a cycle with its path.
fn topo_sort(nodes: Vec<PlannedTask>) -> Result<Plan, PlanError> {
    let n = nodes.len();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state = vec![0u8; n];
    let mut order = Vec::with_capacity(n);
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        nodes: &[PlannedTask],
        state: &mut [u8],
        order: &mut Vec<usize>,
        path: &mut Vec<usize>,
    ) -> Result<(), PlanError> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|&p| nodes[p].id.clone()).collect();
                cycle.push(nodes[i].id.clone());
                return Err(PlanError::Cycle(cycle));
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for &d in &nodes[i].deps {
            visit(d, nodes, state, order, path)?;
        }
        path.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..n {
        visit(i, &nodes, &mut state, &mut order, &mut path)?;
    }
    let mut remap = vec![0usize; n];
    for (new, &old) in order.iter().enumerate() {
        remap[old] = new;
    }
    let mut slots: Vec<Option<PlannedTask>> = nodes.into_iter().map(Some).collect();
    let mut tasks = Vec::with_capacity(n);
    for (new, &old) in order.iter().enumerate() {
        let mut t = slots[old].take().expect("each node is visited once");
        t.index = new;
        t.deps = t.deps.iter().map(|&d| remap[d]).collect();
        t.deps.sort_unstable();
        tasks.push(t);
    }
    Ok(Plan { tasks })
}
