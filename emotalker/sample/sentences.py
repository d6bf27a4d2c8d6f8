"""Sentences and voices for the synthetic speech: varied lengths, sounds and speakers."""

from __future__ import annotations

SENTENCES = (
    "Please bring me the big map before noon.",
    "Why would you ever go out in weather like this?",
    "My mother bought a huge yellow boat last summer.",
    "I never thought the garden would look so beautiful.",
    "Could you tell me where the old station is?",
    "We planned everything, and then it rained all week.",
    "The baby is sleeping, so keep the music down.",
    "Put the papers back in the blue box, please.",
    "He told me the meeting was moved to Monday.",
    "Maybe we should paint the kitchen a warmer colour.",
    "Nobody believed the story about the missing bike.",
    "Bob made pancakes for everybody this morning.",
    "You promised me you would be home by nine.",
    "The museum opens at ten on Sundays.",
    "I can't believe you ate the whole pie!",
    "Every morning she walks the dog by the river.",
    "Bring both bags up before the bus leaves.",
    "Those people parked right in front of my house.",
    "What happened to the money we put aside?",
    "Open the window, it is far too warm in here.",
    "My brother plays the piano better than me.",
    "The phone rang twice, and then it stopped.",
    "Please remember to buy milk and bread.",
    "We met a man who builds boats by hand.",
    "Look at that, the lights are all back on.",
    "I think the map is wrong about this path.",
    "Tomorrow we move into the new apartment.",
    "Maybe it's better if you wait outside.",
    "Paul lost his passport at the airport.",
    "The film was much longer than I expected.",
    "Somebody keeps moving my books around.",
    "Be careful, the bottom step is broken.",
    "Mom baked a big plum cake for the party.",
    "The puppy ran off with my left boot.",
    "I have been waiting here for almost an hour.",
    "Put more pepper in the soup, it's bland.",
    "Maybe we can meet by the market at five.",
    "They built a bridge over the bay in May.",
    "Somebody broke the lamp in the bedroom.",
    "We should be home before it gets dark.",
)

SHORT_SENTENCES = (
    "Bob made a map.",
    "Put it back, please.",
    "Maybe by May.",
    "Bring me both.",
    "My pen broke.",
    "Be home by nine.",
)

# espeak-ng voices (language + variant) that ship with espeak-ng-data.
VOICES = ("en-us", "en", "en+f3", "en+m3", "en+f2", "en+m7", "en-us+f4", "en-gb-x-rp")
