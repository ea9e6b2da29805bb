-- AudioSocket dissector for Wireshark (3.x and 4.x), from audiosocket-cli.
--
-- AudioSocket is the TCP protocol Asterisk streams a call's audio over. Every
-- message is 1 byte kind, 2 bytes big-endian payload length, then the payload.
-- Asterisk is the TCP client and always sends a UUID message first.
--
-- Install: `audiosocket dissector --install`, or copy this file into
-- ~/.config/wireshark/plugins/ (or run tshark/wireshark with -X lua_script:THIS_FILE).
--
-- Found on TCP port 9092 (a preference), and on any port by a heuristic (the rule
-- is stated where the heuristic is, at the end). The side that sent the UUID is
-- Asterisk: its messages are ">", the application's "<".
--
-- Filter fields: audiosocket.kind, .len, .uuid, .digit, .rate, .samples,
-- .error_code, .dir, .payload; expert infos audiosocket.malformed,
-- audiosocket.refused, audiosocket.error, audiosocket.hangup.

local DEFAULT_PORT = 9092
local HEADER_SIZE = 3

local audiosocket = Proto("audiosocket", "AudioSocket")

local KIND = { HANGUP = 0x00, UUID = 0x01, DTMF = 0x03, ERROR = 0xff }

local RATES = {
    [0x10] = 8000, [0x11] = 12000, [0x12] = 16000, [0x13] = 24000, [0x14] = 32000,
    [0x15] = 44100, [0x16] = 48000, [0x17] = 96000, [0x18] = 192000,
}

local KIND_NAMES = {
    [KIND.HANGUP] = "hangup",
    [KIND.UUID] = "uuid",
    [KIND.DTMF] = "dtmf",
    [KIND.ERROR] = "error",
}
for kind, rate in pairs(RATES) do
    KIND_NAMES[kind] = "audio " .. rate .. " Hz"
end

local DTMF_DIGITS = "0123456789*#ABCD"

-- Asterisk's error payload is a set of bit flags; name every byte value once here.
local ERROR_FLAGS = {
    { 0x01, "hangup-of-calling-party" },
    { 0x02, "frame-forwarding-error" },
    { 0x04, "memory-error" },
}
local function describe_error_code(code)
    local names = {}
    for _, flag in ipairs(ERROR_FLAGS) do
        -- Arithmetic, not bit32: Lua 5.2 (Wireshark up to 4.2) and 5.4 (4.4 on) alike.
        if math.floor(code / flag[1]) % 2 == 1 then
            names[#names + 1] = flag[2]
        end
    end
    if code >= 0x08 or #names == 0 then
        names[#names + 1] = "application-specific"
    end
    return table.concat(names, "+")
end
local ERROR_CODE_NAMES = {}
for code = 0, 255 do
    ERROR_CODE_NAMES[code] = describe_error_code(code)
end

local f = audiosocket.fields
f.kind = ProtoField.uint8("audiosocket.kind", "Kind", base.HEX, KIND_NAMES)
f.len = ProtoField.uint16("audiosocket.len", "Length", base.DEC)
f.dir = ProtoField.string("audiosocket.dir", "Direction",
    base.ASCII, "> Asterisk to application, < application to Asterisk")
f.uuid = ProtoField.string("audiosocket.uuid", "UUID")
f.digit = ProtoField.string("audiosocket.digit", "DTMF digit")
f.rate = ProtoField.uint32("audiosocket.rate", "Sample rate", base.DEC)
f.samples = ProtoField.uint32("audiosocket.samples", "Samples", base.DEC)
f.error_code = ProtoField.uint8("audiosocket.error_code", "Error code", base.HEX, ERROR_CODE_NAMES)
f.error_hangup = ProtoField.bool("audiosocket.error_code.hangup", "Hangup of calling party",
    8, nil, 0x01)
f.error_forwarding = ProtoField.bool("audiosocket.error_code.frame_forwarding",
    "Frame forwarding error", 8, nil, 0x02)
f.error_memory = ProtoField.bool("audiosocket.error_code.memory", "Memory error", 8, nil, 0x04)
f.payload = ProtoField.bytes("audiosocket.payload", "Payload")

local e = {
    malformed = ProtoExpert.new("audiosocket.malformed", "Malformed AudioSocket message",
        expert.group.MALFORMED, expert.severity.ERROR),
    refused = ProtoExpert.new("audiosocket.refused",
        "Asterisk ends the session on this message from the application",
        expert.group.PROTOCOL, expert.severity.ERROR),
    error = ProtoExpert.new("audiosocket.error", "AudioSocket error message",
        expert.group.RESPONSE_CODE, expert.severity.WARN),
    hangup = ProtoExpert.new("audiosocket.hangup", "AudioSocket hangup",
        expert.group.SEQUENCE, expert.severity.CHAT),
    direction = ProtoExpert.new("audiosocket.direction_unknown",
        "Which side is Asterisk is unknown (the capture missed the UUID message)",
        expert.group.UNDECODED, expert.severity.NOTE),
}
audiosocket.experts = { e.malformed, e.refused, e.error, e.hangup, e.direction }

audiosocket.prefs.port = Pref.uint("TCP port", DEFAULT_PORT,
    "TCP port of AudioSocket applications (any other port is found by its UUID message)")

-- Per-connection state, built on the first pass in capture order and only read
-- afterwards (Wireshark dissects packets again in any order when they are clicked).
-- streams[tcp.stream] = { client = "address port" } or { rejected = true }; a
-- connection found by the heuristic also has heuristic = true, and while Asterisk's
-- first bytes are awaited, awaiting_uuid = true and app_messages (a count).
-- frames[frame number] = the state of the connection the frame was dissected in on the
-- first pass: later passes read it from there. (A first pass may have no protocol tree,
-- as tshark -2's and Wireshark's own reading of a file without a display filter have;
-- fields such as tcp.stream are then missing, and streams are keyed by address and port.)
local streams = {}
local frames = {}
local tcp_stream_field = Field.new("tcp.stream")
-- TCP's "conversation completeness" (Wireshark 3.6 on): bit 0x01 says the SYN was seen,
-- 0x08 that a payload was, before this packet's. Older versions do not have the field.
local ok_completeness, tcp_completeness_field = pcall(Field.new, "tcp.completeness")
if not ok_completeness then
    tcp_completeness_field = nil
end
-- How many messages an application that spoke first may send before Asterisk's UUID
-- (1 s of 20 ms frames; Asterisk sends its UUID as soon as it connects).
local APP_FIRST_LIMIT = 50

function audiosocket.init()
    streams = {}
    frames = {}
end

local function stream_key(pinfo)
    local field = tcp_stream_field()
    if field then
        return field.value
    end
    -- No tcp.stream (should not happen over TCP): the ports name the connection.
    local a = tostring(pinfo.src) .. " " .. pinfo.src_port
    local b = tostring(pinfo.dst) .. " " .. pinfo.dst_port
    if a < b then return a .. "|" .. b end
    return b .. "|" .. a
end

local function source(pinfo)
    return tostring(pinfo.src) .. " " .. pinfo.src_port
end

local function destination(pinfo)
    return tostring(pinfo.dst) .. " " .. pinfo.dst_port
end

local function starts_with_uuid(tvb)
    return tvb:len() >= HEADER_SIZE and tvb(0, 1):uint() == KIND.UUID
        and tvb(1, 2):uint() == 16
end

-- Do the bytes begin as a UUID message header does? nil: too few bytes to tell yet.
local UUID_HEADER = { KIND.UUID, 0x00, 0x10 }
local function uuid_header_so_far(tvb)
    local n = math.min(tvb:len(), HEADER_SIZE)
    for i = 1, n do
        if tvb(i - 1, 1):uint() ~= UUID_HEADER[i] then
            return false
        end
    end
    if n < HEADER_SIZE then
        return nil
    end
    return true
end

-- What an application may send at all: non-empty audio of whole 16-bit samples, or a
-- hangup without payload (anything else ends the session, or is malformed).
local function application_may_send(kind, size)
    if RATES[kind] then
        return size > 0 and size % 2 == 0
    end
    return kind == KIND.HANGUP and size == 0
end

-- Is the whole of tvb a chain of messages the application may send, at least one of
-- them audio, a hangup only last, ending exactly at the end of tvb? (The heuristic's
-- test of an application's first bytes.)
local function application_chain(tvb)
    local total = tvb:len()
    local offset, audio = 0, 0
    while offset < total do
        if total - offset < HEADER_SIZE then
            return false
        end
        local kind = tvb(offset, 1):uint()
        local size = tvb(offset + 1, 2):uint()
        if not application_may_send(kind, size) or offset + HEADER_SIZE + size > total then
            return false
        end
        offset = offset + HEADER_SIZE + size
        if RATES[kind] then
            audio = audio + 1
        elseif offset < total then
            return false  -- a hangup ends what the application says
        end
    end
    return audio > 0
end

-- Are the messages of tvb (from a message boundary; the last may be cut) all ones the
-- application may send? And how many whole ones are there? Checked on the
-- application's bytes until Asterisk's UUID.
local function application_messages(tvb)
    local total = tvb:len()
    local offset, count = 0, 0
    while total - offset >= HEADER_SIZE do
        local kind = tvb(offset, 1):uint()
        local size = tvb(offset + 1, 2):uint()
        if not application_may_send(kind, size) then
            return false, count
        end
        offset = offset + HEADER_SIZE + size
        if offset <= total then
            count = count + 1
        end
    end
    return true, count
end

-- Is this packet's payload the connection's first, its SYN in the capture? nil: cannot
-- tell (no protocol tree on this pass, or a Wireshark older than 3.6).
local function first_payload()
    if tcp_completeness_field == nil then
        return nil
    end
    local field = tcp_completeness_field()
    if field == nil then
        return nil
    end
    local syn = field.value % 2 == 1
    local data = math.floor(field.value / 8) % 2 == 1
    return syn and not data
end

local function on_port(pinfo)
    return pinfo.src_port == audiosocket.prefs.port or pinfo.dst_port == audiosocket.prefs.port
end

-- The connection's state; on the first packet seen, decide which side is Asterisk.
local function stream_state(tvb, pinfo)
    if pinfo.visited and frames[pinfo.number] then
        return frames[pinfo.number]
    end
    local key = stream_key(pinfo)
    local state = streams[key]
    -- A connection the heuristic refused at its first payload may still be on the port.
    if state == nil or (state.rejected and not state.heuristic) then
        state = {}
        if starts_with_uuid(tvb) then
            state.client = source(pinfo)
        elseif pinfo.dst_port == audiosocket.prefs.port then
            state.client = source(pinfo)
        elseif pinfo.src_port == audiosocket.prefs.port then
            state.client = destination(pinfo)
        end
        streams[key] = state
    end
    if not pinfo.visited then
        frames[pinfo.number] = state
    end
    return state
end

local function direction_of(state, pinfo)
    if state.client == nil then
        return nil
    end
    return source(pinfo) == state.client and ">" or "<"
end

local function uuid_string(range)
    local hex = range:bytes():tohex(true)
    return hex:sub(1, 8) .. "-" .. hex:sub(9, 12) .. "-" .. hex:sub(13, 16) .. "-"
        .. hex:sub(17, 20) .. "-" .. hex:sub(21, 32)
end

-- What is wrong with a message's content, whoever sent it (nil if nothing).
local function problem(kind, size, tvb, payload_offset)
    if RATES[kind] then
        if size == 0 then return "empty audio message" end
        if size % 2 == 1 then return "odd audio length " .. size .. " (16-bit samples)" end
        return nil
    end
    if kind == KIND.UUID then
        if size ~= 16 then return "uuid payload is " .. size .. " bytes, not 16" end
        return nil
    end
    if kind == KIND.DTMF then
        if size ~= 1 then return "dtmf payload is " .. size .. " bytes, not 1" end
        local byte = tvb(payload_offset, 1):uint()
        if not DTMF_DIGITS:find(string.char(byte), 1, true) then
            return string.format("dtmf byte 0x%02x is not a digit", byte)
        end
        return nil
    end
    if kind == KIND.HANGUP then
        if size > 0 then return "hangup with a " .. size .. "-byte payload" end
        return nil
    end
    if kind == KIND.ERROR then
        return nil
    end
    return string.format("unassigned kind 0x%02x", kind)
end

-- Asterisk accepts from the application only hangup and non-empty audio.
local function refused_by_asterisk(kind, size)
    if RATES[kind] then
        return size == 0
    end
    return kind ~= KIND.HANGUP
end

-- One whole message at offset: its subtree, and a short summary for the Info column.
local function dissect_message(tvb, pinfo, tree, offset, dir)
    local kind = tvb(offset, 1):uint()
    local size = tvb(offset + 1, 2):uint()
    local payload_offset = offset + HEADER_SIZE
    local name = KIND_NAMES[kind] or string.format("unknown 0x%02x", kind)

    local item = tree:add(audiosocket, tvb(offset, HEADER_SIZE + size))
    if dir then
        item:add(f.dir, dir):set_generated()
    else
        item:add_proto_expert_info(e.direction)
    end
    item:add(f.kind, tvb(offset, 1))
    item:add(f.len, tvb(offset + 1, 2))

    local summary = name
    local rate = RATES[kind]
    if rate then
        item:add(f.rate, tvb(offset, 1), rate):set_generated()
        local samples = math.floor(size / 2)
        local samples_item
        if size > 0 then
            samples_item = item:add(f.samples, tvb(payload_offset, size), samples)
        else
            samples_item = item:add(f.samples, tvb(offset + 1, 2), samples)
        end
        samples_item:set_generated()
        summary = summary .. ", " .. samples .. " samples"
    elseif kind == KIND.UUID and size == 16 then
        local uuid = uuid_string(tvb(payload_offset, 16))
        item:add(f.uuid, tvb(payload_offset, 16), uuid)
        summary = summary .. " " .. uuid
    elseif kind == KIND.DTMF and size == 1 then
        local digit = tvb(payload_offset, 1):string()
        item:add(f.digit, tvb(payload_offset, 1))
        summary = summary .. " " .. digit
    elseif kind == KIND.ERROR then
        if size >= 1 then
            local code = tvb(payload_offset, 1):uint()
            local code_item = item:add(f.error_code, tvb(payload_offset, 1))
            code_item:add(f.error_hangup, tvb(payload_offset, 1))
            code_item:add(f.error_forwarding, tvb(payload_offset, 1))
            code_item:add(f.error_memory, tvb(payload_offset, 1))
            summary = summary .. string.format(" 0x%02x %s", code, ERROR_CODE_NAMES[code])
            item:add_proto_expert_info(e.error, "AudioSocket error: " .. ERROR_CODE_NAMES[code])
        else
            summary = summary .. " (no code)"
            item:add_proto_expert_info(e.error, "AudioSocket error (no code)")
        end
    elseif kind == KIND.HANGUP then
        item:add_proto_expert_info(e.hangup)
    end
    -- The raw payload, unless the fields above already show all of it.
    local shown = (kind == KIND.UUID and size == 16) or (kind == KIND.DTMF and size == 1)
        or (kind == KIND.ERROR and size == 1)
    if size > 0 and not shown then
        item:add(f.payload, tvb(payload_offset, size))
    end

    local wrong = problem(kind, size, tvb, payload_offset)
    if wrong then
        item:add_proto_expert_info(e.malformed, "Malformed AudioSocket message: " .. wrong)
    end
    if dir == "<" and refused_by_asterisk(kind, size) then
        item:add_proto_expert_info(e.refused,
            "Asterisk ends the session: the application may send only hangup and non-empty audio")
    end

    item:append_text(", " .. (dir or "?") .. " " .. summary .. ", " .. size
        .. (size == 1 and " byte" or " bytes"))
    return (dir or "?") .. " " .. summary
end

-- A connection the heuristic found by the application's first messages stays
-- AudioSocket while the application sends only what it may, Asterisk's first bytes are
-- a UUID message, and they come within the application's first APP_FIRST_LIMIT messages.
-- Once one of these fails, it is not AudioSocket: from that packet on in the first
-- pass. Later passes give the verdict of the whole capture: AudioSocket if Asterisk's
-- UUID came, not at all otherwise.
local function still_audiosocket(state, tvb, pinfo)
    if pinfo.visited then
        return not state.rejected and not state.awaiting_uuid
    end
    if state.rejected then
        return false
    end
    if not state.awaiting_uuid then
        return true
    end
    local ok
    if source(pinfo) == state.client then
        ok = uuid_header_so_far(tvb)
        if ok then
            state.awaiting_uuid = nil
        elseif ok == nil then
            ok = true  -- a header cut after 1 or 2 bytes: reassembly brings the rest
        end
    else
        local count
        ok, count = application_messages(tvb)
        state.app_messages = state.app_messages + count
        ok = ok and state.app_messages <= APP_FIRST_LIMIT
    end
    if not ok then
        state.rejected = true
    end
    return ok
end

-- Every whole message in this TCP payload; a message cut at the end asks TCP for more
-- (pinfo.desegment_*), so it is dissected once, in the packet that completes it.
local function dissect(tvb, pinfo, tree)
    local total = tvb:len()
    if total == 0 then
        return 0
    end
    local state = stream_state(tvb, pinfo)
    if state.heuristic and not on_port(pinfo) and not still_audiosocket(state, tvb, pinfo) then
        return 0
    end
    local dir = direction_of(state, pinfo)
    local offset = 0
    local summaries = {}
    while offset < total do
        local remaining = total - offset
        if remaining < HEADER_SIZE then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            break
        end
        local size = tvb(offset + 1, 2):uint()
        if remaining < HEADER_SIZE + size then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = HEADER_SIZE + size - remaining
            break
        end
        summaries[#summaries + 1] = dissect_message(tvb, pinfo, tree, offset, dir)
        offset = offset + HEADER_SIZE + size
    end
    if #summaries > 0 then
        pinfo.cols.protocol = "AudioSocket"
        -- Runs of equal summaries (audio frames) fold into one: "> audio 8000 Hz, 160 samples x3".
        local parts, last, count = {}, nil, 0
        local function flush()
            if last then
                parts[#parts + 1] = count > 1 and (last .. " x" .. count) or last
            end
        end
        for _, s in ipairs(summaries) do
            if s == last then
                count = count + 1
            else
                flush()
                last, count = s, 1
            end
        end
        flush()
        pinfo.cols.info = table.concat(parts, "; ")
    end
    return total
end

function audiosocket.dissector(tvb, pinfo, tree)
    return dissect(tvb, pinfo, tree)
end

-- The heuristic, for any TCP port (docs/wireshark.md states the same rule). It decides
-- on the first payload of a connection, from either side, and claims the connection when:
--   1. that payload begins with a UUID message header (01 00 10): its sender is Asterisk;
--      or
--   2. that payload is, from its first byte to its last, one or more whole messages an
--      application may send: audio (kind 0x10-0x18) with a non-empty even-length
--      payload, a hangup (00 00 00) allowed only last. Asterisk always speaks first
--      with its UUID, so this sender is the application speaking first, and the other
--      side, the one that connected, is Asterisk. The connection stays AudioSocket
--      while the application sends only audio and hangups and Asterisk's first bytes,
--      within the application's first APP_FIRST_LIMIT messages, are a UUID message
--      header (still_audiosocket, above); later passes keep it only if they were.
--      Where TCP says the capture lacks the connection's SYN, or that a payload came
--      before this one (another dissector took it), rule 2 does not apply.
-- Any other first payload, and the connection is never looked at again. Random bytes
-- pass rule 2 about once in 2 million (9 kinds in 256, and a length ending exactly where
-- the payload does); HTTP begins with a letter; a TLS record with 16 03 01 or 16 03 03,
-- an odd length if read as AudioSocket's.
local function heuristic(tvb, pinfo, tree)
    local state
    if pinfo.visited then
        state = frames[pinfo.number]
        if state == nil or state.rejected or state.awaiting_uuid then
            return false
        end
    else
        local key = stream_key(pinfo)
        state = streams[key]
        if state == nil then
            if starts_with_uuid(tvb) then
                state = { client = source(pinfo), heuristic = true }
            elseif first_payload() ~= false and application_chain(tvb) then
                state = {
                    client = destination(pinfo), heuristic = true,
                    awaiting_uuid = true, app_messages = 0,
                }
            else
                -- Decided on the first payload only, so audio bytes mid-stream never match.
                streams[key] = { rejected = true }
                return false
            end
            streams[key] = state
        elseif state.rejected then
            return false
        end
    end
    -- Later packets of this connection come straight here, before port and heuristic lookups.
    pinfo.conversation = audiosocket
    return dissect(tvb, pinfo, tree) > 0
end

local tcp_port_table = DissectorTable.get("tcp.port")
local registered_port = audiosocket.prefs.port
tcp_port_table:add(registered_port, audiosocket)

function audiosocket.prefs_changed()
    if audiosocket.prefs.port ~= registered_port then
        tcp_port_table:remove(registered_port, audiosocket)
        registered_port = audiosocket.prefs.port
        tcp_port_table:add(registered_port, audiosocket)
    end
end

audiosocket:register_heuristic("tcp", heuristic)
