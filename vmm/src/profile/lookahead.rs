//! How far conservative parallel stepping could overlap a run (docs/design.md "Many machines").
//!
//! A frame sent at virtual time `t'` arrives at `t' + L` or later, `L` being the switch's minimum
//! link latency, so a machine's step at `t` cannot depend on another machine's step at `t'` when
//! `t < t' + L`: the two could run at once. The world steps every machine on one thread; this
//! replays the run's steps, with the wall time each took, onto a number of threads under that
//! rule (each step as early as its own machine's previous step, every other machine's steps at
//! least `L` earlier in virtual time, and the last world action allow), in the order the world
//! took them. With a thread per machine the result is the wall time a parallel scheduler could
//! reach at best; with fewer threads, where each step takes a thread greedily, an estimate of
//! it. Either says whether building one pays, per scenario. It is computed as the run goes, in
//! memory bounded by the steps within `L` of the latest.

use std::collections::VecDeque;
use std::time::Duration;

/// The thread counts the estimate is made for; `None` is a thread per machine.
const THREADS: [Option<usize>; 3] = [Some(2), Some(4), None];

/// The run's steps so far, replayed onto each of [`THREADS`].
#[derive(Debug)]
pub struct ParallelBound {
    schedules: Vec<Schedule>,
    sequential_ns: u64,
    /// The least virtual time a frame takes between machines since the last barrier
    /// (`u64::MAX`: they exchange none).
    lookahead_ns: u64,
    min_lookahead_ns: u64,
}

/// What [`ParallelBound`] found: the steps' wall time on one thread and on more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParallelEstimate {
    /// The smallest lookahead any step had (`u64::MAX`: the machines never exchange frames).
    pub min_lookahead_ns: u64,
    /// The machines' steps, one after another, as the run took them.
    pub sequential: Duration,
    /// The same steps on this many threads (`None`: one per machine).
    pub parallel: Vec<(Option<usize>, Duration)>,
}

/// One replay: when each thread and each machine is next free, in wall nanoseconds from the
/// start of the run.
#[derive(Debug)]
struct Schedule {
    /// Per thread, when it is free; empty for a thread per machine.
    threads: Vec<u64>,
    /// Per machine index, when its latest step ends.
    machines: Vec<u64>,
    /// Steps less than the lookahead behind the latest, as (virtual time, end).
    recent: VecDeque<(u64, u64)>,
    /// The latest end of the steps that left `recent`: every later step waits for them.
    settled: u64,
    /// The latest end of any step.
    end: u64,
}

impl Schedule {
    fn new(threads: Option<usize>) -> Self {
        Self {
            threads: vec![0; threads.unwrap_or(0)],
            machines: Vec::new(),
            recent: VecDeque::new(),
            settled: 0,
            end: 0,
        }
    }

    fn step(&mut self, machine: usize, vtime: u64, lookahead_ns: u64, wall_ns: u64) {
        // The world steps in order of virtual time, so `recent` is sorted by it.
        while let Some(&(t, end)) = self.recent.front() {
            if t.saturating_add(lookahead_ns) > vtime {
                break;
            }
            self.settled = self.settled.max(end);
            self.recent.pop_front();
        }
        if self.machines.len() <= machine {
            self.machines.resize(machine + 1, 0);
        }
        let ready = self.settled.max(self.machines[machine]);
        let thread = self.thread_for(ready);
        let start = thread.map_or(ready, |i| ready.max(self.threads[i]));
        let end = start.saturating_add(wall_ns);
        if let Some(i) = thread {
            self.threads[i] = end;
        }
        self.machines[machine] = end;
        // Without a network no step ever waits for another machine's: keep none.
        if lookahead_ns != u64::MAX {
            self.recent.push_back((vtime, end));
        }
        self.end = self.end.max(end);
    }

    /// The thread for a step that could start at `ready`: of those free by then the one that
    /// became free last, leaving earlier ones for steps that can start earlier; else the one
    /// free first. `None` with a thread per machine.
    fn thread_for(&self, ready: u64) -> Option<usize> {
        let free = |i: &usize| self.threads[*i];
        let idle = (0..self.threads.len())
            .filter(|i| free(i) <= ready)
            .max_by_key(free);
        idle.or_else(|| (0..self.threads.len()).min_by_key(free))
    }

    /// A world action (a fault, a network change) waits for every step before it, and every
    /// step after it waits for it.
    fn barrier(&mut self) {
        self.recent.clear();
        self.settled = self.end;
    }
}

impl Default for ParallelBound {
    fn default() -> Self {
        Self {
            schedules: THREADS.iter().map(|&t| Schedule::new(t)).collect(),
            sequential_ns: 0,
            lookahead_ns: u64::MAX,
            min_lookahead_ns: u64::MAX,
        }
    }
}

impl ParallelBound {
    /// The world stepped `machine` at virtual time `vtime`, which took `wall` of real time.
    pub fn step(&mut self, machine: usize, vtime: u64, wall: Duration) {
        let wall_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        self.sequential_ns = self.sequential_ns.saturating_add(wall_ns);
        self.min_lookahead_ns = self.min_lookahead_ns.min(self.lookahead_ns);
        for schedule in &mut self.schedules {
            schedule.step(machine, vtime, self.lookahead_ns, wall_ns);
        }
    }

    /// The world starts running or applied an action (see [`Schedule::barrier`]); from here
    /// frames take at least `lookahead_ns` of virtual time between machines. Only an action
    /// changes the links, so the steps between barriers share one lookahead.
    pub fn barrier(&mut self, lookahead_ns: u64) {
        self.lookahead_ns = lookahead_ns;
        for schedule in &mut self.schedules {
            schedule.barrier();
        }
    }

    pub fn estimate(&self) -> ParallelEstimate {
        ParallelEstimate {
            min_lookahead_ns: self.min_lookahead_ns,
            sequential: Duration::from_nanos(self.sequential_ns),
            parallel: THREADS
                .iter()
                .zip(&self.schedules)
                .map(|(&threads, s)| (threads, Duration::from_nanos(s.end)))
                .collect(),
        }
    }
}

impl ParallelEstimate {
    /// One line for the profile's summary.
    pub fn summary(&self) -> String {
        let sequential = self.sequential.as_secs_f64();
        let mut line = format!(
            "parallel stepping (an estimate; the world steps machines on one thread): the \
             machines' steps took {sequential:.2} s"
        );
        if self.min_lookahead_ns == u64::MAX {
            line.push_str("; as the machines exchange no frames, they could take");
        } else {
            line.push_str(&format!(
                "; with the switch's minimum latency of {} as lookahead, they could take",
                crate::units::format_ns(self.min_lookahead_ns)
            ));
        }
        for (i, (threads, wall)) in self.parallel.iter().enumerate() {
            let secs = wall.as_secs_f64();
            let ratio = sequential / secs.max(1e-9);
            let on = match threads {
                Some(n) => format!("on {n} threads"),
                None => "with a thread per machine".to_string(),
            };
            let sep = if i == 0 { " " } else { ", " };
            line.push_str(&format!("{sep}{secs:.2} s {on} ({ratio:.2}x)"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A run whose frames take `lookahead_ns` between machines from the start.
    fn with_lookahead(lookahead_ns: u64) -> ParallelBound {
        let mut bound = ParallelBound::default();
        bound.barrier(lookahead_ns);
        bound
    }

    fn walls(estimate: &ParallelEstimate) -> Vec<u64> {
        estimate
            .parallel
            .iter()
            .map(|(_, d)| d.as_millis() as u64)
            .collect()
    }

    #[test]
    fn steps_of_one_machine_never_overlap() {
        let mut bound = with_lookahead(50);
        for t in 0..5 {
            bound.step(0, t * 1000, 10 * MS);
        }
        let estimate = bound.estimate();
        assert_eq!(estimate.sequential, 50 * MS);
        assert_eq!(walls(&estimate), [50, 50, 50]);
    }

    #[test]
    fn machines_within_the_lookahead_overlap_and_farther_apart_wait() {
        // Two machines stepped alternately 10 ns apart: within a lookahead of 50 ns each
        // machine's steps depend only on its own, so two threads halve the time.
        let mut near = with_lookahead(50);
        for i in 0..10 {
            near.step((i % 2) as usize, i * 10, 10 * MS);
        }
        assert_eq!(walls(&near.estimate()), [50, 50, 50]);
        // 100 ns apart, beyond the lookahead: every step waits for the one before.
        let mut far = with_lookahead(50);
        for i in 0..10 {
            far.step((i % 2) as usize, i * 100, 10 * MS);
        }
        assert_eq!(walls(&far.estimate()), [100, 100, 100]);
    }

    #[test]
    fn threads_limit_the_overlap() {
        // Four machines at once, each step 10 ms: two threads take 20 ms, four take 10.
        let mut bound = with_lookahead(50);
        for m in 0..4 {
            bound.step(m, 0, 10 * MS);
        }
        assert_eq!(walls(&bound.estimate()), [20, 10, 10]);
    }

    #[test]
    fn as_many_threads_as_machines_are_a_thread_per_machine() {
        // Two machines that never wait for each other: m1's last step is ready at 8 ms, when
        // the thread m0 used first is still busy; the other one is free.
        let mut bound = with_lookahead(u64::MAX);
        for (machine, wall) in [(0, 10), (1, 5), (1, 3), (0, 10), (1, 15)] {
            bound.step(machine, 0, wall * MS);
        }
        assert_eq!(walls(&bound.estimate()), [23, 23, 23]);
    }

    #[test]
    fn a_world_action_waits_for_every_step_before_it() {
        let mut bound = with_lookahead(1_000);
        bound.step(0, 0, 30 * MS);
        bound.barrier(1_000);
        bound.step(1, 5, 10 * MS);
        assert_eq!(walls(&bound.estimate()), [40, 40, 40]);
    }

    #[test]
    fn machines_without_a_network_never_wait_for_each_other() {
        let mut bound = with_lookahead(u64::MAX);
        for i in 0..6 {
            bound.step((i % 3) as usize, i * 1_000_000, 10 * MS);
        }
        let estimate = bound.estimate();
        assert_eq!(walls(&estimate), [30, 20, 20]);
        assert!(estimate
            .summary()
            .contains("as the machines exchange no frames, they could take 0.03 s on 2 threads"));
        assert!(bound.schedules.iter().all(|s| s.recent.is_empty()));
    }
}
