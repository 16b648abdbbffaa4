-- Argo CD health check for tracing.caas.io/TracingPolicy.
-- Add it to argocd-cm as resource.customizations.health.tracing.caas.io_TracingPolicy
-- (see docs/argocd.md). It needs no standard library beyond Argo CD's defaults.
--
-- The operator writes standard metav1.Conditions in status.conditions (Ready,
-- Progressing, Degraded, Conflicted, and the kstatus ones Reconciling and
-- Stalled) and status.observedGeneration, so Flux (kstatus) needs no check.

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and type(c.message) == "string" and c.message ~= "" then
    return c.message
  end
  return fallback
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status

-- Until the operator has seen the current spec, its conditions describe an older one.
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  local waiting = "waiting for the operator"
  if generation ~= nil then
    waiting = waiting .. " to observe generation " .. tostring(generation)
  end
  return { status = "Progressing", message = waiting }
end

local conditions = status.conditions
local stalled = condition(conditions, "Stalled")
if is_true(stalled) then
  return { status = "Degraded", message = message_of(stalled, "stalled") }
end
local degraded = condition(conditions, "Degraded")
if is_true(degraded) then
  return { status = "Degraded", message = message_of(degraded, "degraded") }
end
local reconciling = condition(conditions, "Reconciling")
if is_true(reconciling) then
  return { status = "Progressing", message = message_of(reconciling, "reconciling") }
end
local progressing = condition(conditions, "Progressing")
if is_true(progressing) then
  return { status = "Progressing", message = message_of(progressing, "rolling out") }
end
local ready = condition(conditions, "Ready")
if is_true(ready) then
  return { status = "Healthy", message = message_of(ready, "ready") }
end
return { status = "Progressing", message = message_of(ready, "waiting for the operator") }
