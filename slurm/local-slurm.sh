#!/usr/bin/env bash
# Kept in galmock so users can try the Slurm path on a laptop (Debian/Ubuntu, as root).
# local-slurm.sh - idempotent single-node Slurm 22.05 + munge on Debian 12, as root, no systemd needed.
#   ./local-slurm.sh up      install (if needed), write config, start munged/slurmctld/slurmd, smoke-test
#   ./local-slurm.sh down    cancel jobs, stop the daemons this setup uses (by pidfile)
#   ./local-slurm.sh status
# Afterwards: export SLURM_CONF=$PREFIX/slurm.conf   (or run with LINK_ETC=1 to symlink /etc/slurm/slurm.conf)
set -euo pipefail
PREFIX=${PREFIX:-/tmp/local-slurm}
NODE_CPUS=${NODE_CPUS:-$(nproc)}            # may exceed real cores (config_overrides) for more concurrent jobs
NODE_MEM=${NODE_MEM:-$(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo)}   # MiB
WITH_PMIX=${WITH_PMIX:-1}                   # libpmix-dev => srun --mpi=pmix (Open MPI 5 wheels)
LINK_ETC=${LINK_ETC:-0}
export SLURM_CONF=$PREFIX/slurm.conf
MUNGE_PID=/run/munge/munged.pid

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

up() {
  local pkgs=(slurm-wlm munge); if [[ $WITH_PMIX == 1 ]]; then pkgs+=(libpmix-dev); fi
  if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${pkgs[@]}"
  fi

  # --- munge ---
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --force --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge_ok; then runuser -u munge -- /usr/sbin/munged; fi
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { echo "munged failed to start" >&2; exit 1; }

  # --- config ---
  mkdir -p "$PREFIX"/{state,spool,log}
  # Job ids unique across throwaway Slurms: MPICH names its shared-memory segments after the PMI
  # kvsname (the job and step id under srun), and a segment left in /dev/shm by an aborted job
  # of an earlier Slurm with the same id corrupts MPI_Init ("Message truncated", UCX "invalid
  # bandwidth"). Chosen once per PREFIX, so the config stays the same across restarts.
  [[ -s $PREFIX/first-job-id ]] || echo $(( $(date +%s) % 100000 * 100 + 1000 )) >"$PREFIX/first-job-id"
  local new; new=$(mktemp)
  cat >"$new" <<EOF
ClusterName=localcluster
FirstJobId=$(cat "$PREFIX/first-job-id")
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$PREFIX/slurmctld.pid
SlurmdPidFile=$PREFIX/slurmd.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$PREFIX/log/jobcomp.txt
ReturnToService=2
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  local changed=0
  cmp -s "$new" "$SLURM_CONF" || { mv "$new" "$SLURM_CONF"; chmod 644 "$SLURM_CONF"; changed=1; }
  rm -f "$new"
  if [[ $LINK_ETC == 1 ]]; then mkdir -p /etc/slurm; ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf; fi
  if [[ $changed == 1 ]]; then   # restart running daemons so they pick up the new config
    for d in slurmd slurmctld; do if alive "$PREFIX/$d.pid"; then kill "$(cat "$PREFIX/$d.pid")"; fi; done
    for _ in $(seq 50); do alive "$PREFIX/slurmd.pid" || alive "$PREFIX/slurmctld.pid" || break; sleep 0.2; done
  fi

  # --- daemons (they daemonize and write pidfiles) ---
  alive "$PREFIX/slurmctld.pid" || slurmctld
  alive "$PREFIX/slurmd.pid" || slurmd
  local st=
  for _ in $(seq 100); do
    st=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
    case $st in idle|mixed|allocated|completing) break ;;
      down*|drain*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;; esac
    sleep 0.3
  done
  [[ $st =~ ^(idle|mixed|allocated|completing)$ ]] || { echo "node not ready: '$st' (see $PREFIX/log)" >&2; exit 1; }
  if [[ ${SMOKE:-1} == 1 ]]; then   # submit a trivial job and poll (sbatch --wait polls too slowly)
    local jid js=; jid=$(sbatch --parsable -o /dev/null --wrap true)
    for _ in $(seq 300); do
      js=$(scontrol -o show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || true)
      case $js in *=COMPLETED) break ;; *=PENDING|*=RUNNING|*=CONFIGURING|*=COMPLETING|'') sleep 0.2 ;;
        *) echo "smoke job $jid: $js" >&2; exit 1 ;; esac
    done
    [[ $js == *=COMPLETED ]] || { echo "smoke job $jid did not finish: $js" >&2; exit 1; }
  fi
  echo "Slurm up. export SLURM_CONF=$SLURM_CONF"
}

down() {
  if alive "$PREFIX/slurmctld.pid"; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    sleep 1
  fi
  for d in slurmd slurmctld; do if alive "$PREFIX/$d.pid"; then kill "$(cat "$PREFIX/$d.pid")"; fi; done
  if alive "$MUNGE_PID"; then kill "$(cat "$MUNGE_PID")"; fi
  for _ in $(seq 50); do
    alive "$PREFIX/slurmd.pid" || alive "$PREFIX/slurmctld.pid" || alive "$MUNGE_PID" || break; sleep 0.2
  done
  echo "stopped"
}

status() {
  for f in "$PREFIX/slurmctld.pid" "$PREFIX/slurmd.pid" "$MUNGE_PID"; do
    if alive "$f"; then echo "$(basename "$f" .pid): running pid $(cat "$f")"; else echo "$(basename "$f" .pid): stopped"; fi
  done
  alive "$PREFIX/slurmctld.pid" && sinfo || true
}

case ${1:-up} in up) up ;; down) down ;; status) status ;; *) echo "usage: $0 up|down|status" >&2; exit 2 ;; esac
