//! Which entries an agent may serve: those parented by the agent, by a node alias that
//! applies to it (an entry parented by the server whose selectors are a subset of the
//! agent's), and, recursively, by any entry already authorized.

use ironpact_datastore::Entry;
use ironpact_spiffe::{Selector, SpiffeId};
use std::collections::{BTreeSet, HashMap};

pub fn authorized_entries(
    all: &[Entry],
    agent_id: &SpiffeId,
    agent_selectors: &[Selector],
    server_id: &SpiffeId,
    now: i64,
) -> Vec<Entry> {
    let live = |e: &&Entry| e.expires_at == 0 || e.expires_at > now;
    let have: BTreeSet<&Selector> = agent_selectors.iter().collect();
    let mut by_parent: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in all.iter().filter(live) {
        by_parent.entry(e.parent_id.as_str()).or_default().push(e);
    }
    let mut out: Vec<&Entry> = Vec::new();
    let mut seen_entries: BTreeSet<&str> = BTreeSet::new();
    let mut frontier: Vec<&str> = vec![agent_id.as_str()];
    for alias in by_parent.get(server_id.as_str()).into_iter().flatten() {
        if !alias.selectors.is_empty() && alias.selectors.iter().all(|s| have.contains(s)) {
            seen_entries.insert(&alias.id);
            out.push(alias);
            frontier.push(alias.spiffe_id.as_str());
        }
    }
    let mut seen_ids: BTreeSet<&str> = frontier.iter().copied().collect();
    while let Some(parent) = frontier.pop() {
        for e in by_parent.get(parent).into_iter().flatten() {
            if parent == server_id.as_str() || !seen_entries.insert(&e.id) {
                continue;
            }
            out.push(e);
            if seen_ids.insert(e.spiffe_id.as_str()) {
                frontier.push(e.spiffe_id.as_str());
            }
        }
    }
    let mut v: Vec<Entry> = out.into_iter().cloned().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
        let mut e = Entry::new(
            SpiffeId::parse(spiffe).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        );
        e.id = id.into();
        e
    }

    #[test]
    fn direct_alias_nested_and_expired() {
        let server = SpiffeId::parse("spiffe://td/spire/server").unwrap();
        let agent = SpiffeId::parse("spiffe://td/spire/agent/join_token/t").unwrap();
        let mut expired = e(
            "x",
            "spiffe://td/old",
            "spiffe://td/spire/agent/join_token/t",
            &["unix:uid:3"],
        );
        expired.expires_at = 10;
        let all = vec![
            e(
                "1",
                "spiffe://td/w1",
                "spiffe://td/spire/agent/join_token/t",
                &["unix:uid:1"],
            ),
            e(
                "2",
                "spiffe://td/node-a",
                "spiffe://td/spire/server",
                &["sev_snp:measurement:aa"],
            ),
            e("3", "spiffe://td/w2", "spiffe://td/node-a", &["unix:uid:2"]),
            e(
                "4",
                "spiffe://td/node-b",
                "spiffe://td/spire/server",
                &["sev_snp:measurement:bb"],
            ),
            e("5", "spiffe://td/w3", "spiffe://td/node-b", &["unix:uid:2"]),
            e("6", "spiffe://td/w4", "spiffe://td/w2", &["unix:uid:4"]),
            e(
                "7",
                "spiffe://td/other",
                "spiffe://td/spire/agent/join_token/other",
                &["unix:uid:1"],
            ),
            expired,
        ];
        let sels = vec![
            Selector::parse("sev_snp:measurement:aa").unwrap(),
            Selector::parse("x:y").unwrap(),
        ];
        let got: Vec<String> = authorized_entries(&all, &agent, &sels, &server, 100)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ["1", "2", "3", "6"]);
        let none: Vec<Selector> = vec![];
        let got: Vec<String> = authorized_entries(&all, &agent, &none, &server, 100)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ["1"]);
    }

    #[test]
    fn cycles_terminate() {
        let server = SpiffeId::parse("spiffe://td/spire/server").unwrap();
        let agent = SpiffeId::parse("spiffe://td/agent").unwrap();
        let all = vec![
            e("1", "spiffe://td/a", "spiffe://td/agent", &["k:1"]),
            e("2", "spiffe://td/b", "spiffe://td/a", &["k:2"]),
            e("3", "spiffe://td/a", "spiffe://td/b", &["k:3"]),
        ];
        assert_eq!(authorized_entries(&all, &agent, &[], &server, 0).len(), 3);
    }
}
