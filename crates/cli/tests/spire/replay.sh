#!/usr/bin/env bash
# A script as a SPIRE operator writes it, against spire-server and spire-agent (here: our
# binaries under SPIRE's names), with -socketPath set: every documented command and flag of
# doc/spire_server.md and doc/spire_agent.md that ironpact implements, -output json read by jq
# and text output read by grep as SPIRE prints it. Run by crates/cli/tests/spire_cli.rs.
set -euo pipefail
S=(-socketPath "$SERVER_SOCK")
A=(-socketPath "$AGENT_SOCK")
TD=example.org
NODE=spiffe://$TD/host-replay
WL=spiffe://$TD/replay
UID_=$(id -u)
step() { echo "== $*" >&2; }
# reads all of its input (grep -q stops early, and pipefail would see the writer's SIGPIPE)
has() { grep "$@" >/dev/null; }
trap 'echo "FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

step healthcheck
spire-server healthcheck "${S[@]}" | has -x 'Server is healthy.'
spire-server healthcheck "${S[@]}" -shallow -verbose | has 'Server is healthy.'
spire-agent healthcheck "${A[@]}" | has -x 'Agent is healthy.'
spire-server validate -config "$SERVER_CONF" | has 'configuration file is valid'
spire-agent validate -config "$AGENT_CONF" | has 'configuration file is valid'

step token generate
spire-server token generate "${S[@]}" -spiffeID spiffe://$TD/spare -ttl 600 | has '^Token: '
spire-server token generate "${S[@]}" -output json | jq -e '(.value | length) > 0 and (.expires_at | type) == "string"' >/dev/null

step entry create
spire-server entry create "${S[@]}" -parentID "$NODE" -spiffeID "$WL" -selector "unix:uid:$UID_" \
  -x509SVIDTTL 600 -jwtSVIDTTL 300 -dns replay.example.org -hint replay \
  -entryExpiry 4102444800 -output json |
  jq -e '.results[0].status.code == 0 and .results[0].entry.spiffe_id.path == "/replay" and .results[0].entry.expires_at == "4102444800"' >/dev/null
spire-server entry create "${S[@]}" -node -spiffeID spiffe://$TD/replay-nodes -selector x509pop:subject:cn:replay |
  has 'Parent ID        : spiffe://example.org/spire/server'
spire-server entry create "${S[@]}" -entryID replay-fixed -parentID "$NODE" -spiffeID spiffe://$TD/replay-admin \
  -selector unix:uid:99999 -admin -downstream -storeSVID | has 'Entry ID         : replay-fixed'
echo '{"entries":[{"spiffe_id":{"trust_domain":"example.org","path":"/from-stdin"},"parent_id":{"trust_domain":"example.org","path":"/host-replay"},"selectors":[{"type":"unix","value":"uid:99998"}]}]}' |
  spire-server entry create "${S[@]}" -data - | has 'SPIFFE ID        : spiffe://example.org/from-stdin'

spire-server entry create "${S[@]}" -parentID "$NODE" -spiffeID spiffe://$TD/lazy -selector unix:uid:99996 \
  -disableX509SVIDPrefetch | has 'X509 prefetch    : false'

spire-server entry show "${S[@]}" -spiffeID spiffe://$TD/lazy -output json > lazy.json
jq -e '.entries[0].disable_x509_svid_prefetch == true' lazy.json >/dev/null
spire-server entry update "${S[@]}" -data lazy.json -output json | jq -e '.results[0].entry.disable_x509_svid_prefetch == true' >/dev/null

step entry show and count
id=$(spire-server entry show "${S[@]}" -spiffeID "$WL" -output json | jq -r '.entries[0].id')
spire-server entry show "${S[@]}" -entryID "$id" | has "Entry ID         : $id"
spire-server entry show "${S[@]}" -parentID "$NODE" -selector "unix:uid:$UID_" | has "SPIFFE ID        : $WL"
spire-server entry show "${S[@]}" -downstream -output json | jq -e '[.entries[].id] == ["replay-fixed"]' >/dev/null
spire-server entry count "${S[@]}" -parentID "$NODE" | has -x '4 registration entries'
spire-server entry count "${S[@]}" -output json | jq -e '.count >= 4' >/dev/null
spire-server entry show "${S[@]}" -output json | jq -r '.entries[].spiffe_id.path' | has -x /replay

step entry update
spire-server entry update "${S[@]}" -entryID "$id" -parentID "$NODE" -spiffeID "$WL" -selector "unix:uid:$UID_" \
  -x509SVIDTTL 900 -dns replay.example.org -output json |
  jq -e '.results[0].entry.x509_svid_ttl == 900 and .results[0].entry.revision_number == "1" and .results[0].entry.hint == ""' >/dev/null
spire-server entry show "${S[@]}" -entryID "$id" -output json > entries.json
spire-server entry update "${S[@]}" -data entries.json | has "Entry ID         : $id"

step bundle
spire-server bundle show "${S[@]}" | has 'BEGIN CERTIFICATE'
spire-server bundle show "${S[@]}" -format spiffe | jq -e '.keys | length >= 2' >/dev/null
spire-server bundle show "${S[@]}" -output json |
  jq -e '.trust_domain == "example.org" and (.x509_authorities[0].asn1 | length) > 100 and (.sequence_number | type) == "string"' >/dev/null
spire-server bundle show "${S[@]}" -output json | jq -r '.x509_authorities[0].asn1' | base64 -d |
  openssl x509 -inform der -noout -subject >/dev/null
spire-server bundle count "${S[@]}" | has -x '1 bundle'
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.pem \
  -days 1 -subj /CN=other -addext basicConstraints=critical,CA:TRUE 2>/dev/null
spire-server bundle set "${S[@]}" -id spiffe://other.org -path other.pem | has -x 'bundle set.'
spire-server bundle list "${S[@]}" -id spiffe://other.org -output json | jq -e '.trust_domain == "other.org"' >/dev/null
spire-server bundle list "${S[@]}" | has 'other.org'
spire-server bundle show "${S[@]}" -format spiffe > third.jwks
spire-server bundle set "${S[@]}" -id spiffe://third.org -format spiffe < third.jwks | has -x 'bundle set.'
spire-server bundle list "${S[@]}" -id spiffe://third.org -format spiffe | jq -e '.keys | length >= 1' >/dev/null
spire-server bundle list "${S[@]}" -output json | jq -e '[.bundles[].trust_domain] | index("other.org") != null' >/dev/null
spire-server bundle count "${S[@]}" -output json | jq -e '.count == 3' >/dev/null
spire-server entry create "${S[@]}" -parentID "$NODE" -spiffeID spiffe://$TD/federated -selector unix:uid:99997 \
  -federatesWith spiffe://other.org >/dev/null
spire-server entry count "${S[@]}" -federatesWith spiffe://other.org | has -x '1 registration entry'
if spire-server bundle delete "${S[@]}" -id spiffe://other.org 2>err.txt; then exit 1; fi
grep -q 'Error:' err.txt
spire-server bundle delete "${S[@]}" -id spiffe://other.org -mode dissociate -output json |
  jq -e '.results[0].trust_domain == "other.org" and .results[0].status.code == 0' >/dev/null

step agent
spire-server agent list "${S[@]}" -output json | jq -r '.agents[0].id.path' | has '^/spire/agent/join_token/'
agent_id=$(spire-server agent list "${S[@]}" -output json | jq -r '.agents[0].id | "spiffe://\(.trust_domain)\(.path)"')
spire-server agent list "${S[@]}" -attestationType join_token | has "SPIFFE ID         : $agent_id"
spire-server agent list "${S[@]}" -banned false -canReattest false -expiresBefore "2100-01-01 00:00:00 +0000 UTC" |
  has "$agent_id"
spire-server agent count "${S[@]}" -selector join_token:x -matchSelectorsOn any | has -x '0 attested agents'
spire-server agent count "${S[@]}" -output json | jq -e '.count == 1' >/dev/null
spire-server agent show "${S[@]}" -spiffeID "$agent_id" | has 'Attestation type  : join_token'
spire-server agent show "${S[@]}" -spiffeID "$agent_id" -output json | jq -e '.banned == false and .attestation_type == "join_token"' >/dev/null
spire-server agent purge "${S[@]}" -expiredFor 720h -dryRun | has 'No agents to purge.'
spire-server agent purge "${S[@]}" -dryRun -output json | jq -e '.[0].expired_agents == []' >/dev/null

step workload API
for _ in $(seq 50); do
  spire-agent api fetch x509 "${A[@]}" -timeout 1s -output json 2>/dev/null |
    jq -e --arg wl "$WL" '[.svids[].spiffe_id] | index($wl) != null' >/dev/null && break
  sleep 0.2
done
spire-agent api fetch "${A[@]}" -silent -write svids
openssl verify -CAfile svids/bundle.0.pem svids/svid.0.pem >/dev/null
spire-agent api fetch x509 "${A[@]}" | has "SPIFFE ID:		$WL"
jwt=$(spire-agent api fetch jwt "${A[@]}" -audience db,cache -spiffeID "$WL" -output json | jq -r '.[0].svids[0].svid')
spire-agent api fetch jwt "${A[@]}" -audience db | has "^token($WL):"
spire-agent api validate jwt "${A[@]}" -audience cache -svid "$jwt" | has 'SVID is valid.'
spire-agent api validate jwt "${A[@]}" -audience db -svid "$jwt" -timeout 5s -output json |
  jq -e --arg wl "$WL" '.spiffe_id == $wl and (.claims.aud | index("db")) != null and (.claims.exp | type) == "number"' >/dev/null
timeout 3 spire-agent api watch "${A[@]}" > watch.txt || true
grep -q "SPIFFE ID:		$WL" watch.txt

step mint
spire-server x509 mint "${S[@]}" -spiffeID spiffe://$TD/minted -dns minted.example.org -ttl 1h -write minted |
  has 'X509-SVID written to'
openssl verify -CAfile minted/bundle.pem minted/svid.pem >/dev/null
spire-server x509 mint "${S[@]}" -spiffeID spiffe://$TD/minted -output json | jq -r '.[0].x509_svid[0]' | base64 -d |
  openssl x509 -inform der -noout -ext subjectAltName | has 'URI:spiffe://example.org/minted'
spire-server jwt mint "${S[@]}" -spiffeID spiffe://$TD/minted -audience a -audience b -ttl 5m -output json |
  jq -e '.svid.id.path == "/minted" and (.svid.token | split(".") | length) == 3' >/dev/null
spire-server jwt mint "${S[@]}" -spiffeID spiffe://$TD/minted -audience a -write token.jwt | has 'JWT-SVID written to'
test -s token.jwt

step federation
spire-server federation create "${S[@]}" -trustDomain peer.test -bundleEndpointURL https://127.0.0.1:9/ \
  -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://peer.test/spire/server \
  -trustDomainBundlePath other.pem -trustDomainBundleFormat pem | has 'Trust domain              : peer.test'
echo '{"federation_relationships":[{"trust_domain":"web.test","bundle_endpoint_url":"https://127.0.0.1:9/","https_web":{}}]}' |
  spire-server federation create "${S[@]}" -data - -output json | jq -e '.results[0].status.code == 0' >/dev/null
spire-server federation list "${S[@]}" | has -x 'Found 2 federation relationships'
spire-server federation list "${S[@]}" -output json |
  jq -e '[.federation_relationships[].trust_domain] == ["peer.test", "web.test"] and .federation_relationships[0].https_spiffe.endpoint_spiffe_id == "spiffe://peer.test/spire/server"' >/dev/null
spire-server federation show "${S[@]}" -trustDomain web.test -output json | jq -e '.https_web == {}' >/dev/null
spire-server federation update "${S[@]}" -trustDomain web.test -bundleEndpointURL https://127.0.0.1:10/ \
  -bundleEndpointProfile https_web | has 'https://127.0.0.1:10/'
if spire-server federation refresh "${S[@]}" -id web.test 2>err.txt; then exit 1; fi
grep -q 'last good bundle stays' err.txt
spire-server federation delete "${S[@]}" -id web.test | has 'deleted'
spire-server federation delete "${S[@]}" -id spiffe://peer.test -output json | jq -e '.results[0].status.code == 0' >/dev/null

step authorities, logger, debug
spire-server localauthority x509 show "${S[@]}" -output json | jq -e '.active.authority_id | length > 0' >/dev/null
spire-server localauthority jwt show "${S[@]}" | has 'Active JWT authority:'
if spire-server upstreamauthority taint "${S[@]}" -subjectKeyID abc 2>err.txt; then exit 1; fi
grep -q 'upstream' err.txt
spire-server logger get "${S[@]}" -output json | jq -e '.current_level == "DEBUG"' >/dev/null
spire-server debug getinfo "${S[@]}" | has 'Registered Agents:       1'
spire-server debug getinfo "${S[@]}" -output prettyprint | has 'Server Debug Info:'
spire-agent debug getinfo -socketPath "$AGENT_ADMIN" -output JSON | jq -e '.cached_x509_svids_count >= 1' >/dev/null
spire-agent logger get -socketPath "$AGENT_ADMIN" | has 'Logger Level'

step what ironpact refuses, with the reason

if spire-agent run -config "$AGENT_CONF" -allowUnauthenticatedVerifiers 2>err.txt; then exit 1; fi
grep -q 'not in ironpact' err.txt

step entry delete, agent ban and evict
spire-server entry delete "${S[@]}" -entryID replay-fixed | has 'Deleted entry with ID: replay-fixed'
spire-server entry delete "${S[@]}" -entryID "$id" -output json | jq -e '.results[0].status.code == 0' >/dev/null
spire-server agent ban "${S[@]}" -spiffeID "$agent_id" | has -x 'Agent banned successfully'
spire-server agent evict "${S[@]}" -spiffeID "$agent_id" -output json | jq -e '. == {}' >/dev/null
spire-server agent count "${S[@]}" | has -x '0 attested agents'
echo "replayed"
