-- Like post_chat.lua, with 5 ms between requests, so that work the proxy does after an answer
-- (a shadow student call) has finished before the next request arrives.
dofile("bench/post_chat.lua")
function delay()
  return 5
end
